import com.sun.jna.Callback;
import com.sun.jna.Library;
import com.sun.jna.Native;
import com.sun.jna.NativeLong;
import com.sun.jna.Pointer;
import com.sun.jna.Structure;
import com.sun.jna.ptr.PointerByReference;

import java.nio.charset.StandardCharsets;

/**
 * tether's client for a JVM app, through JNA over the C ABI (sdk/include/tether.h), in the
 * shape an Android app takes: the library owns the connection on a thread of its own; the
 * app tells it what the OS says (network available or lost, foreground or background) and
 * gets a {@link Listener} call for each event, on the library's thread.
 */
public final class TetherClient implements AutoCloseable {
    /** What the app hears. Calls come on the connection's thread, one at a time. */
    public interface Listener {
        void onOnline(long sessionId, long serverEpoch);
        void onOffline();
        void onPush(long id, byte[] payload);
        void onUpstreamResult(long clientId, boolean accepted, int reason, byte[] reply);
        void onTokenNotice(long expiresInMs);
        void onStopped(int closeCode);
    }

    /** Thrown when the library refuses a call: its code and its sentence. */
    public static final class TetherException extends RuntimeException {
        public final int code;

        TetherException(int code, String message) {
            super(message + " (" + code + ")");
            this.code = code;
        }
    }

    // The C ABI, as the header declares it.
    static final int EVENT_ONLINE = 1, EVENT_OFFLINE = 2, EVENT_PUSH = 3,
            EVENT_UPSTREAM_RESULT = 5, EVENT_STOPPED = 8, EVENT_TOKEN_NOTICE = 9;

    @Structure.FieldOrder({"size", "user", "device", "token", "network_key", "heartbeat_json",
            "memory_json", "nat_hint_ms", "foreground", "seed"})
    public static class Options extends Structure {
        public NativeLong size;
        public String user;
        public String device;
        public String token;
        public String network_key;
        public String heartbeat_json;
        public String memory_json;
        public int nat_hint_ms;
        public byte foreground; // C bool
        public long seed;

        public Options() {
            super();
            size = new NativeLong(size());
        }
    }

    @Structure.FieldOrder({"kind", "code", "id", "value", "value2", "data", "len", "from_user",
            "from_device"})
    public static class Event extends Structure {
        public int kind;
        public int code;
        public long id;
        public long value;
        public long value2;
        public Pointer data;
        public NativeLong len;
        public Pointer from_user;
        public Pointer from_device;

        public Event(Pointer p) {
            super(p);
            read();
        }

        byte[] bytes() {
            long n = len.longValue();
            return n == 0 || data == null ? new byte[0] : data.getByteArray(0, (int) n);
        }
    }

    interface EventCallback extends Callback {
        void invoke(Pointer userData, Pointer event);
    }

    interface Lib extends Library {
        Lib INSTANCE = Native.load("tether_sdk", Lib.class);

        String tether_last_error();
        String tether_version();
        int tether_connection_start(Options options, String server, EventCallback callback,
                                    Pointer userData, PointerByReference out);
        int tether_connection_stop(Pointer c);
        int tether_connection_ack(Pointer c, long id);
        int tether_connection_upstream(Pointer c, long clientId, byte[] data, NativeLong len);
        int tether_connection_network_up(Pointer c, String key);
        int tether_connection_network_down(Pointer c);
        int tether_connection_set_foreground(Pointer c, byte foreground);
        int tether_connection_set_token(Pointer c, String token);
    }

    private final Pointer conn;
    // Held so the garbage collector never frees the callback while the library may call it.
    private final EventCallback callback;

    private TetherClient(Pointer conn, EventCallback callback) {
        this.conn = conn;
        this.callback = callback;
    }

    /** Connects to {@code server} ("host:port") as {@code options} say. */
    public static TetherClient start(Options options, String server, Listener listener) {
        EventCallback cb = (userData, p) -> {
            Event e = new Event(p);
            switch (e.kind) {
                case EVENT_ONLINE: listener.onOnline(e.id, e.value); break;
                case EVENT_OFFLINE: listener.onOffline(); break;
                case EVENT_PUSH: listener.onPush(e.id, e.bytes()); break;
                case EVENT_UPSTREAM_RESULT:
                    listener.onUpstreamResult(e.id, e.code == 0, e.code, e.bytes()); break;
                case EVENT_TOKEN_NOTICE: listener.onTokenNotice(e.value); break;
                case EVENT_STOPPED: listener.onStopped(e.code); break;
                default: break;
            }
        };
        PointerByReference out = new PointerByReference();
        check(Lib.INSTANCE.tether_connection_start(options, server, cb, null, out));
        return new TetherClient(out.getValue(), cb);
    }

    public static String version() {
        return Lib.INSTANCE.tether_version();
    }

    private static void check(int rc) {
        if (rc != 0) {
            throw new TetherException(rc, Lib.INSTANCE.tether_last_error());
        }
    }

    /** Acknowledges push {@code id}. */
    public void ack(long id) {
        check(Lib.INSTANCE.tether_connection_ack(conn, id));
    }

    /** Sends {@code payload} to the app's backend; its one result comes to the listener. */
    public void sendUpstream(long clientId, byte[] payload) {
        check(Lib.INSTANCE.tether_connection_upstream(conn, clientId, payload,
                new NativeLong(payload.length)));
    }

    public void sendUpstream(long clientId, String text) {
        sendUpstream(clientId, text.getBytes(StandardCharsets.UTF_8));
    }

    /** ConnectivityManager.NetworkCallback#onAvailable: the network key (an SSID hash...). */
    public void onNetworkAvailable(String key) {
        check(Lib.INSTANCE.tether_connection_network_up(conn, key));
    }

    /** ConnectivityManager.NetworkCallback#onLost. */
    public void onNetworkLost() {
        check(Lib.INSTANCE.tether_connection_network_down(conn));
    }

    /** Activity lifecycle: onStart (true) and onStop (false). */
    public void setForeground(boolean foreground) {
        check(Lib.INSTANCE.tether_connection_set_foreground(conn, (byte) (foreground ? 1 : 0)));
    }

    /** A new token, after {@link Listener#onTokenNotice}. */
    public void setToken(String token) {
        check(Lib.INSTANCE.tether_connection_set_token(conn, token));
    }

    /** Stops the connection and waits for its thread; not from a listener call. */
    @Override
    public void close() {
        check(Lib.INSTANCE.tether_connection_stop(conn));
    }
}
