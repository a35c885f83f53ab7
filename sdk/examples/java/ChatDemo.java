import java.nio.charset.StandardCharsets;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * The chat steps on {@link TetherClient}: log in, acknowledge every push, send one message up
 * to the backend after the first push, and after the server restarted (a new epoch) and one
 * more push arrived, stop. One line per step on stdout, read by tests/tests/sdk.rs. Settings
 * from the environment: TETHER_SERVER, TETHER_USER, TETHER_DEVICE, TETHER_TOKEN.
 */
public final class ChatDemo {
    private static String need(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            System.err.println("ChatDemo: " + name + " is not set");
            System.exit(2);
        }
        return v;
    }

    private static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        String server = need("TETHER_SERVER");
        TetherClient.Options bad = new TetherClient.Options();
        bad.device = "phone";
        bad.token = "t";
        try {
            TetherClient.start(bad, server, null);
            say("error: a login without a user was taken");
        } catch (TetherClient.TetherException e) {
            say("refused " + e.code + " " + e.getMessage());
        }

        TetherClient.Options opts = new TetherClient.Options();
        opts.user = need("TETHER_USER");
        opts.device = need("TETHER_DEVICE");
        opts.token = need("TETHER_TOKEN");
        opts.network_key = "wifi:desk";
        opts.foreground = 1;
        opts.seed = 7;

        CountDownLatch done = new CountDownLatch(1);
        TetherClient[] client = new TetherClient[1];
        CountDownLatch started = new CountDownLatch(1);
        TetherClient.Listener listener = new TetherClient.Listener() {
            long firstEpoch = 0;
            boolean restarted = false;
            int pushes = 0;

            public void onOnline(long sessionId, long serverEpoch) {
                if (firstEpoch == 0) {
                    firstEpoch = serverEpoch;
                } else if (serverEpoch != firstEpoch) {
                    restarted = true;
                }
                say("online restarted=" + (restarted ? 1 : 0));
            }

            public void onOffline() {
                say("offline");
            }

            public void onPush(long id, byte[] payload) {
                awaitStart();
                say("push " + new String(payload, StandardCharsets.UTF_8));
                client[0].ack(id);
                pushes++;
                if (pushes == 1) {
                    client[0].sendUpstream(1, "hello backend from java");
                } else if (restarted) {
                    done.countDown();
                }
            }

            public void onUpstreamResult(long clientId, boolean accepted, int reason, byte[] reply) {
                say("upstream " + clientId + " " + (accepted ? "accepted" : "refused " + reason) + " "
                        + new String(reply, StandardCharsets.UTF_8));
            }

            public void onTokenNotice(long expiresInMs) {
                say("token notice " + expiresInMs);
            }

            public void onStopped(int closeCode) {
                say("stopped " + closeCode);
                done.countDown();
            }

            private void awaitStart() {
                try {
                    started.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        };
        client[0] = TetherClient.start(opts, server, listener);
        started.countDown();
        say("started " + TetherClient.version());
        // What an Android app does as it comes up: the network it is on, and it is visible.
        client[0].onNetworkAvailable("wifi:desk");
        client[0].setForeground(true);

        boolean finished = done.await(120, TimeUnit.SECONDS);
        client[0].close();
        say(finished ? "done" : "timed out");
        System.exit(finished ? 0 : 1);
    }
}
