/*
 * Test of the relay C API, run by scripts/test-c.sh.
 *
 *   test_relay WORKDIR GROUP PORT
 *       A publisher (open access, TLS), a relay of its database "ledger" publishing on
 *       GROUP+1 from a data directory of its own, and a subscriber of the relay pinning the
 *       relay's fingerprint. 300 puts, before and while the relay runs; the downstream
 *       replica must hold every value at the master's version. The relay's key epoch must
 *       stay put when the master rotates its key; its stats must count every import.
 *       Misuse (NULL handles, no database, the same directory twice) gives status codes
 *       with messages.
 *
 * Prints "PASS ..." and exits 0, or prints "FAIL ..." and exits 1.
 */
#define _POSIX_C_SOURCE 200809L

#include "mcsync.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void fail_at(int line, const char *what, mcsync_status st)
{
    char msg[512];
    mcsync_last_error(msg, sizeof msg, NULL);
    printf("FAIL relay (test_relay.c:%d): %s -> %d (%s): %s\n", line, what, (int)st,
           mcsync_status_str((int)st), msg);
    exit(1);
}

#define CHECK(call)                                                                          \
    do {                                                                                     \
        mcsync_status st_ = (call);                                                          \
        if (st_ != MCSYNC_OK)                                                                \
            fail_at(__LINE__, #call, st_);                                                   \
    } while (0)

#define ASSERT(cond)                                                                         \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            printf("FAIL relay (test_relay.c:%d): %s\n", __LINE__, #cond);                   \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

/* A call that must fail with `want` and leave a message. */
static void expect(int line, const char *what, mcsync_status got, mcsync_status want)
{
    char msg[512] = "";
    if (got != want) {
        mcsync_last_error(msg, sizeof msg, NULL);
        printf("FAIL relay (test_relay.c:%d): %s -> %d, expected %d: %s\n", line, what,
               (int)got, (int)want, msg);
        exit(1);
    }
    size_t n = 0;
    mcsync_last_error(msg, sizeof msg, &n);
    ASSERT(n > 0);
}
#define EXPECT(call, want) expect(__LINE__, #call, (call), (want))

static mcsync_publisher_config *publisher_config(const char *dir, const char *group, int port)
{
    mcsync_publisher_config *cfg = NULL;
    CHECK(mcsync_publisher_config_new(&cfg));
    CHECK(mcsync_publisher_config_set_data_dir(cfg, dir));
    CHECK(mcsync_publisher_config_set_group(cfg, group));
    CHECK(mcsync_publisher_config_set_port(cfg, (uint16_t)port));
    CHECK(mcsync_publisher_config_set_interface(cfg, "127.0.0.1"));
    CHECK(mcsync_publisher_config_set_control_addr(cfg, "127.0.0.1:0"));
    CHECK(mcsync_publisher_config_set_ttl(cfg, 0));
    CHECK(mcsync_publisher_config_set_tls_self_signed(cfg));
    CHECK(mcsync_publisher_config_set_open_access(cfg));
    return cfg;
}

static mcsync_subscriber_config *subscriber_config(const char *dir, const char *addr,
                                                   const char *fingerprint)
{
    mcsync_subscriber_config *cfg = NULL;
    CHECK(mcsync_subscriber_config_new(&cfg));
    CHECK(mcsync_subscriber_config_set_data_dir(cfg, dir));
    CHECK(mcsync_subscriber_config_set_server(cfg, addr));
    CHECK(mcsync_subscriber_config_set_trust_fingerprint(cfg, fingerprint));
    CHECK(mcsync_subscriber_config_set_credentials(cfg, "relay", ""));
    CHECK(mcsync_subscriber_config_set_interface(cfg, "127.0.0.1"));
    return cfg;
}

static uint64_t put_range(mcsync_db *db, int from, int to)
{
    uint64_t v = 0;
    for (int i = from; i < to; i++) {
        char key[32], value[64];
        snprintf(key, sizeof key, "k%03d", i % 150);
        int n = snprintf(value, sizeof value, "value %d", i);
        CHECK(mcsync_db_put(db, (const uint8_t *)key, strlen(key), (const uint8_t *)value,
                            (size_t)n, &v));
    }
    return v;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 4) {
        fprintf(stderr, "usage: %s WORKDIR GROUP PORT\n", argv[0]);
        return 2;
    }
    const char *work = argv[1], *group = argv[2];
    int port = atoi(argv[3]);
    char dir[4096], up[4096], down[4096], addr[64], fp[65];
    size_t n = 0;

    snprintf(dir, sizeof dir, "%s/master", work);
    mcsync_publisher_config *pcfg = publisher_config(dir, group, port);
    mcsync_publisher *master = NULL;
    CHECK(mcsync_publisher_open(pcfg, &master));
    mcsync_publisher_config_free(pcfg);
    mcsync_db *db = NULL;
    CHECK(mcsync_publisher_database(master, "ledger", &db));
    put_range(db, 0, 100);
    CHECK(mcsync_publisher_control_addr(master, addr, sizeof addr, &n));
    CHECK(mcsync_publisher_fingerprint(master, fp, sizeof fp, &n));

    /* The relay: upstream = the master, downstream = a group and directory of its own. */
    snprintf(up, sizeof up, "%s/relay-up", work);
    snprintf(down, sizeof down, "%s/relay-down", work);
    char relay_group[64];
    unsigned a, b, c, d;
    ASSERT(sscanf(group, "%u.%u.%u.%u", &a, &b, &c, &d) == 4);
    snprintf(relay_group, sizeof relay_group, "%u.%u.%u.%u", a, b, c, (d + 1) % 255);
    mcsync_subscriber_config *ucfg = subscriber_config(up, addr, fp);
    mcsync_publisher_config *dcfg = publisher_config(down, relay_group, port);
    const char *dbs[] = {"ledger"};
    mcsync_relay *relay = NULL;
    EXPECT(mcsync_relay_open(NULL, dcfg, dbs, 1, &relay), MCSYNC_ERR_NULL);
    EXPECT(mcsync_relay_open(ucfg, dcfg, dbs, 0, &relay), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_relay_open(ucfg, dcfg, NULL, 1, &relay), MCSYNC_ERR_NULL);
    mcsync_publisher_config *same = publisher_config(up, relay_group, port);
    EXPECT(mcsync_relay_open(ucfg, same, dbs, 1, &relay), MCSYNC_ERR_CONFIG);
    mcsync_publisher_config_free(same);
    ASSERT(relay == NULL);
    CHECK(mcsync_relay_open(ucfg, dcfg, dbs, 1, &relay));
    mcsync_subscriber_config_free(ucfg);
    mcsync_publisher_config_free(dcfg);

    char raddr[64], rfp[65];
    CHECK(mcsync_relay_control_addr(relay, raddr, sizeof raddr, &n));
    CHECK(mcsync_relay_fingerprint(relay, rfp, sizeof rfp, &n));
    ASSERT(n == 64 && strcmp(raddr, addr) != 0);
    uint32_t epoch = 0;
    CHECK(mcsync_relay_key_epoch(relay, "ledger", &epoch));

    /* A downstream subscriber of the relay. */
    snprintf(dir, sizeof dir, "%s/downstream", work);
    mcsync_subscriber_config *scfg = subscriber_config(dir, raddr, rfp);
    mcsync_subscriber *sub = NULL;
    CHECK(mcsync_subscriber_open(scfg, &sub));
    mcsync_subscriber_config_free(scfg);
    mcsync_subscription *s = NULL;
    CHECK(mcsync_subscriber_subscribe(sub, "ledger", NULL, NULL, NULL, &s));
    CHECK(mcsync_db_rotate_key(db, NULL));
    uint64_t last = put_range(db, 100, 300);
    CHECK(mcsync_subscription_wait_for_version(s, last, 120000));
    for (int k = 0; k < 150; k++) {
        char key[32], want[64];
        snprintf(key, sizeof key, "k%03d", k);
        int i = k + 150; /* the last write of key k */
        int wn = snprintf(want, sizeof want, "value %d", i);
        uint8_t *value = NULL;
        size_t len = 0;
        CHECK(mcsync_subscription_get(s, (const uint8_t *)key, strlen(key), &value, &len));
        ASSERT(value != NULL && len == (size_t)wn && memcmp(value, want, len) == 0);
        mcsync_bytes_free(value);
    }
    uint64_t rv = 0;
    CHECK(mcsync_relay_version(relay, "ledger", &rv));
    ASSERT(rv == last);
    uint32_t after = 0;
    CHECK(mcsync_relay_key_epoch(relay, "ledger", &after));
    ASSERT(after == epoch);
    /* The relay counts an import once its outcome is collected, just after the version is
     * journaled: wait for the count (every version imported once) with a deadline. */
    uint64_t imported = 0;
    for (int tries = 0; tries < 12000 && imported != last; tries++) {
        mcsync_stats *st = NULL;
        CHECK(mcsync_relay_stats(relay, &st));
        CHECK(mcsync_stats_get(st, "imported", &imported));
        mcsync_stats_free(st);
        if (imported != last) {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    ASSERT(imported == last);
    EXPECT(mcsync_relay_version(relay, NULL, &rv), MCSYNC_ERR_NULL);
    EXPECT(mcsync_relay_version(NULL, "ledger", &rv), MCSYNC_ERR_NULL);

    mcsync_subscription_free(s);
    mcsync_subscriber_free(sub);
    CHECK(mcsync_relay_close(relay));
    CHECK(mcsync_relay_close(relay));
    EXPECT(mcsync_relay_version(relay, "ledger", &rv), MCSYNC_ERR_CLOSED);
    mcsync_relay_free(relay);
    mcsync_relay_free(NULL);
    mcsync_db_free(db);
    CHECK(mcsync_publisher_close(master));
    mcsync_publisher_free(master);
    printf("PASS relay: %llu versions relayed, downstream equals the master\n",
           (unsigned long long)last);
    return 0;
}
