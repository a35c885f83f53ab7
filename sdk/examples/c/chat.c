/*
 * A small chat client on tether's C ABI (sdk/include/tether.h), the driver level: the library
 * owns the socket on a thread of its own and calls back with events.
 *
 * It logs in, acknowledges every push, sends one message up to the app's backend after the
 * first push, and after the server restarts (a new server epoch) and one more push arrives it
 * stops and exits 0. Every step is printed as one line, which the test suite reads
 * (tests/tests/sdk.rs). Settings come from the environment: TETHER_SERVER ("host:port"),
 * TETHER_USER, TETHER_DEVICE, TETHER_TOKEN.
 *
 *   cc -o chat sdk/examples/c/chat.c -Isdk/include target/release/libtether_sdk.a -lpthread -ldl -lm
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tether.h"

struct app {
    struct TetherConnection *conn;
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    int done;
    int pushes;
    uint64_t first_epoch;
    int restarted;
};

static const char *need(const char *name) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        fprintf(stderr, "chat: %s is not set\n", name);
        exit(2);
    }
    return v;
}

static void finish(struct app *app) {
    pthread_mutex_lock(&app->lock);
    app->done = 1;
    pthread_cond_signal(&app->done_cond);
    pthread_mutex_unlock(&app->lock);
}

/* Runs on the connection's thread; everything it is handed dies when it returns. */
static void on_event(void *user_data, const struct TetherEvent *ev) {
    struct app *app = user_data;
    switch (ev->kind) {
    case TETHER_EVENT_ONLINE:
        if (app->first_epoch == 0) {
            app->first_epoch = ev->value;
        } else if (ev->value != app->first_epoch) {
            app->restarted = 1;
        }
        printf("online restarted=%d\n", app->restarted);
        break;
    case TETHER_EVENT_OFFLINE:
        printf("offline\n");
        break;
    case TETHER_EVENT_PUSH: {
        printf("push %.*s\n", (int)ev->len, (const char *)ev->data);
        if (tether_connection_ack(app->conn, ev->id) != TETHER_OK) {
            printf("error ack: %s\n", tether_last_error());
        }
        app->pushes++;
        if (app->pushes == 1) {
            const char *msg = "hello backend from c";
            if (tether_connection_upstream(app->conn, 1, (const uint8_t *)msg, strlen(msg)) != TETHER_OK) {
                printf("error upstream: %s\n", tether_last_error());
            }
        } else if (app->restarted) {
            fflush(stdout);
            finish(app);
        }
        break;
    }
    case TETHER_EVENT_UPSTREAM_RESULT:
        if (ev->code == 0) {
            printf("upstream %llu accepted %.*s\n", (unsigned long long)ev->id, (int)ev->len,
                   (const char *)ev->data);
        } else {
            /* TETHER_REFUSED_NO_BACKEND (10) when no backend is connected, and so on. */
            printf("upstream %llu refused %d %.*s\n", (unsigned long long)ev->id, ev->code,
                   (int)ev->len, (const char *)ev->data);
        }
        break;
    case TETHER_EVENT_STOPPED:
        printf("stopped %d\n", ev->code);
        finish(app);
        break;
    default:
        break;
    }
    fflush(stdout);
}

int main(void) {
    struct app app;
    memset(&app, 0, sizeof app);
    pthread_mutex_init(&app.lock, NULL);
    pthread_cond_init(&app.done_cond, NULL);

    struct TetherOptions opts;
    memset(&opts, 0, sizeof opts);
    opts.size = sizeof opts;
    opts.user = need("TETHER_USER");
    opts.device = need("TETHER_DEVICE");
    opts.token = need("TETHER_TOKEN");
    opts.network_key = "wifi:desk";
    opts.foreground = true;
    opts.seed = 7;

    /* A bad call fails with a code and a sentence, never a crash. */
    struct TetherOptions bad = opts;
    bad.user = NULL;
    struct TetherConnection *none = NULL;
    int rc = tether_connection_start(&bad, need("TETHER_SERVER"), on_event, &app, &none);
    printf("refused %d %s\n", rc, tether_last_error());

    rc = tether_connection_start(&opts, need("TETHER_SERVER"), on_event, &app, &app.conn);
    if (rc != TETHER_OK) {
        fprintf(stderr, "chat: %s\n", tether_last_error());
        return 1;
    }
    printf("started %s\n", tether_version());
    fflush(stdout);

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 120;
    pthread_mutex_lock(&app.lock);
    while (!app.done) {
        if (pthread_cond_timedwait(&app.done_cond, &app.lock, &deadline) != 0) {
            break;
        }
    }
    int done = app.done;
    pthread_mutex_unlock(&app.lock);

    rc = tether_connection_stop(app.conn);
    printf("%s\n", done && rc == TETHER_OK ? "done" : "timed out");
    fflush(stdout);
    return done && rc == TETHER_OK ? 0 : 1;
}
