/*
 * subscriber: keeps a local replica of a published database.
 *
 *   subscriber DATA_DIR CONTROL_ADDR FINGERPRINT DATABASE [WAIT_VERSION [LOSS [SEED]]]
 *
 * Subscribes to DATABASE at the publisher's CONTROL_ADDR, trusting only the TLS certificate
 * with FINGERPRINT (both printed by publisher), as user "demo" with the secret in the
 * environment variable MCSYNC_DEMO_SECRET (default "demo-secret"), with an update
 * callback. Without WAIT_VERSION it prints every update until SIGINT or SIGTERM.
 * With it, it waits (up to 3 minutes) until the replica reaches that version, then prints
 *
 *   version=V records=N digest=XXXXXXXXXXXXXXXX callbacks=C
 *
 * (the digest of the replica's contents, as publisher prints it) and exits. SIGINT or SIGTERM
 * ends either wait early, with the same line for the version reached, and exit status 0.
 * LOSS (e.g. 0.05)
 * injects that fraction of receive-side packet loss, seeded with SEED, to watch repair work.
 * Example:
 *
 *   ./subscriber /tmp/sub1 127.0.0.1:40211 <fingerprint> demo 1001 0.05 1
 */
#define _POSIX_C_SOURCE 200809L

#include "mcsync.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* SIGINT and SIGTERM are blocked in every thread (mcsync's threads inherit the mask of the
 * thread that starts them, so they are blocked before any starts) and taken with
 * sigtimedwait: a signal never interrupts a call inside mcsync. */
static sigset_t stop_signals;
static int stop;

static void block_stop_signals(void)
{
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
}

/* Waits up to `ms` milliseconds for SIGINT or SIGTERM; true once one has come. */
static int stop_requested(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    if (!stop && sigtimedwait(&stop_signals, NULL, &t) > 0)
        stop = 1;
    return stop;
}

static void check(mcsync_status st, const char *what)
{
    if (st == MCSYNC_OK)
        return;
    char msg[512];
    mcsync_last_error(msg, sizeof msg, NULL);
    fprintf(stderr, "subscriber: %s: %s (%s)\n", what, mcsync_status_str((int)st), msg);
    exit(1);
}

/* State shared with the callback, which runs on the subscription's own thread. */
struct progress {
    pthread_mutex_t lock;
    unsigned long long callbacks;
    int verbose;
};

/* Called after each master transaction is committed to the replica, in version order.
 * `u` and everything it points to are valid only during this call. */
static void on_update(void *user_data, const mcsync_update *u)
{
    struct progress *p = user_data;
    pthread_mutex_lock(&p->lock);
    p->callbacks++;
    pthread_mutex_unlock(&p->lock);
    if (!p->verbose)
        return;
    for (size_t i = 0; i < u->ops_len; i++) {
        const mcsync_op *op = &u->ops[i];
        if (op->kind == MCSYNC_OP_PUT)
            printf("v%llu put %.*s = %.*s\n", (unsigned long long)u->version, (int)op->key_len,
                   (const char *)op->key, (int)op->value_len, (const char *)op->value);
        else
            printf("v%llu delete %.*s\n", (unsigned long long)u->version, (int)op->key_len,
                   (const char *)op->key);
    }
    fflush(stdout);
}

static uint64_t digest_add(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return (h ^ 0) * 0x100000001b3ULL;
}

int main(int argc, char **argv)
{
    block_stop_signals();
    if (argc < 5 || argc > 8) {
        fprintf(stderr,
                "usage: %s DATA_DIR CONTROL_ADDR FINGERPRINT DATABASE [WAIT_VERSION [LOSS "
                "[SEED]]]\n",
                argv[0]);
        return 2;
    }
    unsigned long long wait_version = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
    double loss = argc > 6 ? atof(argv[6]) : 0.0;
    unsigned long long seed = argc > 7 ? strtoull(argv[7], NULL, 10) : 1;

    mcsync_subscriber_config *cfg = NULL;
    check(mcsync_subscriber_config_new(&cfg), "config");
    check(mcsync_subscriber_config_set_data_dir(cfg, argv[1]), "data dir");
    check(mcsync_subscriber_config_set_server(cfg, argv[2]), "server");
    check(mcsync_subscriber_config_set_trust_fingerprint(cfg, argv[3]), "fingerprint");
    const char *secret = getenv("MCSYNC_DEMO_SECRET");
    check(mcsync_subscriber_config_set_credentials(cfg, "demo", secret ? secret : "demo-secret"),
          "credentials");
    check(mcsync_subscriber_config_set_interface(cfg, "127.0.0.1"), "interface");
    if (loss > 0)
        check(mcsync_subscriber_config_set_loss(cfg, loss, 1, seed), "loss");

    mcsync_subscriber *subscriber = NULL;
    check(mcsync_subscriber_open(cfg, &subscriber), "opening the subscriber");
    mcsync_subscriber_config_free(cfg);

    struct progress progress = {PTHREAD_MUTEX_INITIALIZER, 0, wait_version == 0};
    mcsync_subscription *sub = NULL;
    /* No free_user_data: `progress` lives on this stack until after the subscription. */
    check(mcsync_subscriber_subscribe(subscriber, argv[4], on_update, &progress, NULL, &sub),
          "subscribing");

    uint64_t version = 0;
    if (wait_version == 0) {
        while (!stop_requested(1000))
            ; /* the callback prints every update */
    } else {
        /* Up to 3 minutes, in slices, so that a signal ends the wait. */
        mcsync_status st = MCSYNC_ERR_TIMEOUT;
        for (int slice = 0; slice < 1800 && st == MCSYNC_ERR_TIMEOUT && !stop_requested(0);
             slice++)
            st = mcsync_subscription_wait_for_version(sub, wait_version, 100);
        if (stop)
            fprintf(stderr, "subscriber: interrupted before version %llu\n", wait_version);
        else
            check(st, "waiting");
    }
    check(mcsync_subscription_version(sub, &version), "version");

    /* Walk the replica: a snapshot in key order. */
    mcsync_subscription_iter *it = NULL;
    check(mcsync_subscription_iter_new(sub, &it), "iterating");
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t records = 0;
    for (;;) {
        const uint8_t *k, *v;
        size_t kl, vl;
        bool has = false;
        check(mcsync_subscription_iter_next(it, &k, &kl, &v, &vl, &has), "next");
        if (!has)
            break;
        h = digest_add(digest_add(h, k, kl), v, vl);
        records++;
    }
    mcsync_subscription_iter_free(it);

    mcsync_stats *stats = NULL;
    uint64_t dropped = 0, repairs = 0;
    check(mcsync_subscription_stats(sub, &stats), "stats");
    check(mcsync_stats_get(stats, "dropped_injected", &dropped), "stat");
    check(mcsync_stats_get(stats, "repairs_requested", &repairs), "stat");
    mcsync_stats_free(stats);

    check(mcsync_subscription_close(sub), "close"); /* no callback runs after this */
    mcsync_subscription_free(sub);
    mcsync_subscriber_free(subscriber);

    printf("version=%llu records=%zu digest=%016llx callbacks=%llu\n", (unsigned long long)version,
           records, (unsigned long long)h, progress.callbacks);
    fprintf(stderr, "subscriber: injected drops %llu, repair requests %llu\n",
            (unsigned long long)dropped, (unsigned long long)repairs);
    return 0;
}
