/*
 * publisher: publishes a database over mcsync and serves repairs until interrupted.
 *
 *   publisher DATA_DIR GROUP PORT COUNT
 *
 * Opens a publisher storing in DATA_DIR, multicasting to GROUP:PORT on 127.0.0.1, and prints
 * the two things a subscriber needs, one per line:
 *
 *   control=127.0.0.1:40211
 *   fingerprint=<64 hex digits>
 *
 * (the SHA-256 fingerprint of its self-signed TLS certificate, which subscribers pin).
 * Subscribers log in as user "demo" with the secret in the environment variable
 * MCSYNC_DEMO_SECRET (default "demo-secret"), checked by an authenticator callback.
 * It then writes COUNT records "key-00000" ..
 * = "value-0" .., one put per version, deletes every tenth key in one transaction, prints
 *
 *   version=V records=N digest=XXXXXXXXXXXXXXXX
 *
 * (the digest of the final contents, as subscriber prints it), and keeps serving
 * subscribers' repairs until SIGINT or SIGTERM. Either signal, at any moment (publishing
 * included), ends it cleanly: it stops writing, commits the deletion of every tenth key it
 * wrote, prints the version line for what it published, closes the publisher, prints
 *
 *   publisher: closed
 *
 * on standard error and exits 0. Example:
 *
 *   ./publisher /tmp/pub 239.1.2.3 47100 1000
 */
#define _POSIX_C_SOURCE 200809L

#include "mcsync.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* SIGINT and SIGTERM are blocked in every thread and taken with sigtimedwait instead of a
 * handler. They are blocked first thing in main, before mcsync starts any thread (a thread
 * inherits the signal mask of the thread that starts it), so a signal never interrupts a call
 * inside mcsync or one of its threads; main polls for it while publishing and waits for it
 * afterwards. */
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

/* Prints what failed and the library's detailed message, then exits. */
static void check(mcsync_status st, const char *what)
{
    if (st == MCSYNC_OK)
        return;
    char msg[512];
    mcsync_last_error(msg, sizeof msg, NULL);
    fprintf(stderr, "publisher: %s: %s (%s)\n", what, mcsync_status_str((int)st), msg);
    exit(1);
}

/* The authenticator: runs on the publisher's connection threads for each login. A real
 * server would look the user up in its own user table (and compare in constant time). */
static int authenticate(void *user_data, const char *user, const char *secret,
                        const char *peer, mcsync_grant *grant)
{
    const char *expected = user_data;
    (void)peer;
    if (strcmp(user, "demo") != 0 || strcmp(secret, expected) != 0)
        return MCSYNC_ERR_AUTH;
    return mcsync_grant_allow_database(grant, "demo"); /* only this database */
}

/* FNV-1a over "key\0value\0" of each record in key order; subscriber.c computes the same. */
static uint64_t digest_add(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return (h ^ 0) * 0x100000001b3ULL; /* the separator */
}

int main(int argc, char **argv)
{
    block_stop_signals();
    if (argc != 5) {
        fprintf(stderr, "usage: %s DATA_DIR GROUP PORT COUNT\n", argv[0]);
        return 2;
    }
    const char *data_dir = argv[1], *group = argv[2];
    int port = atoi(argv[3]);
    long count = atol(argv[4]);
    if (port <= 0 || port > 65535 || count < 0) {
        fprintf(stderr, "publisher: bad PORT or COUNT\n");
        return 2;
    }
    const char *secret = getenv("MCSYNC_DEMO_SECRET");
    if (secret == NULL)
        secret = "demo-secret";

    /* Configure: every setter checks its argument at once. */
    mcsync_publisher_config *cfg = NULL;
    check(mcsync_publisher_config_new(&cfg), "config");
    check(mcsync_publisher_config_set_data_dir(cfg, data_dir), "data dir");
    /* TLS with a self-signed certificate is the default; the callback decides who may
     * subscribe (user_data is the expected secret, which outlives the publisher). */
    check(mcsync_publisher_config_set_authenticator(cfg, authenticate, (void *)secret, NULL),
          "authenticator");
    check(mcsync_publisher_config_set_group(cfg, group), "group");
    check(mcsync_publisher_config_set_port(cfg, (uint16_t)port), "port");
    check(mcsync_publisher_config_set_interface(cfg, "127.0.0.1"), "interface");
    check(mcsync_publisher_config_set_control_addr(cfg, "127.0.0.1:0"), "control address");

    mcsync_publisher *pub = NULL;
    check(mcsync_publisher_open(cfg, &pub), "opening the publisher");
    mcsync_publisher_config_free(cfg); /* the publisher copied what it needs */

    char control[64], fingerprint[65];
    size_t len = 0;
    check(mcsync_publisher_control_addr(pub, control, sizeof control, &len), "control address");
    check(mcsync_publisher_fingerprint(pub, fingerprint, sizeof fingerprint, &len), "fingerprint");
    printf("control=%s\nfingerprint=%s\n", control, fingerprint);
    fflush(stdout);

    mcsync_db *db = NULL;
    check(mcsync_publisher_database(pub, "demo", &db), "database");

    uint64_t version = 0;
    long written = 0; /* keys key-00000 .. written - 1 */
    while (written < count && !stop_requested(0)) {
        char k[32], v[32];
        snprintf(k, sizeof k, "key-%05ld", written);
        snprintf(v, sizeof v, "value-%ld", written);
        check(mcsync_db_put(db, (const uint8_t *)k, strlen(k), (const uint8_t *)v, strlen(v),
                            &version),
              "put");
        written++;
        stop_requested(1); /* 1 ms between puts: a steady stream */
    }
    if (written < count)
        fprintf(stderr, "publisher: interrupted after %ld of %ld puts\n", written, count);

    /* Delete every tenth key, atomically, as one version. */
    mcsync_txn *txn = NULL;
    check(mcsync_txn_begin(db, &txn), "begin");
    for (long i = 0; i < written; i += 10) {
        char k[32];
        snprintf(k, sizeof k, "key-%05ld", i);
        check(mcsync_txn_delete(txn, (const uint8_t *)k, strlen(k)), "txn delete");
    }
    if (written > 0)
        check(mcsync_txn_commit(txn, &version), "commit"); /* frees txn */
    else
        mcsync_txn_discard(txn);

    uint64_t h = 0xcbf29ce484222325ULL;
    long records = 0;
    for (long i = 0; i < written; i++) {
        if (i % 10 == 0)
            continue;
        char k[32], v[32];
        snprintf(k, sizeof k, "key-%05ld", i);
        snprintf(v, sizeof v, "value-%ld", i);
        h = digest_add(digest_add(h, k, strlen(k)), v, strlen(v));
        records++;
    }
    printf("version=%llu records=%ld digest=%016llx\n", (unsigned long long)version, records,
           (unsigned long long)h);
    fflush(stdout);

    while (!stop_requested(1000))
        ; /* serving repairs, on mcsync's threads */

    mcsync_stats *stats = NULL;
    check(mcsync_publisher_stats(pub, &stats), "stats");
    size_t n = 0;
    check(mcsync_stats_count(stats, &n), "stats count");
    for (size_t i = 0; i < n; i++) {
        const char *name = NULL;
        uint64_t value = 0;
        check(mcsync_stats_entry(stats, i, &name, &value), "stats entry");
        fprintf(stderr, "publisher: %s=%llu\n", name, (unsigned long long)value);
    }
    mcsync_stats_free(stats);

    mcsync_db_free(db);
    check(mcsync_publisher_close(pub), "close");
    mcsync_publisher_free(pub);
    fprintf(stderr, "publisher: closed\n");
    return 0;
}
