/*
 * Automated test of the mcsync C API, run by scripts/test-c.sh (also under valgrind).
 *
 *   test_mcsync converge WORKDIR GROUP PORT UPDATES
 *       One publisher and two subscribers in this process, on loopback, each subscriber
 *       with 5 % injected loss. The control channel uses TLS (a self-signed certificate
 *       the subscribers pin) and a C authenticator callback that grants subscriber 1 the
 *       access group "ops" and subscriber 2 none. Publishes UPDATES updates (puts, deletes,
 *       transactions, records restricted to groups, multi-packet values), waits for both
 *       replicas to converge, and checks from C that each replica holds exactly what a
 *       model of the writes says for its groups, that callbacks ran once per version in
 *       order, and that the loss really happened and was repaired.
 *
 *   test_mcsync twophase WORKDIR GROUP PORT
 *       One publisher and two two-phase participants (C vote callbacks; "ledger-b" refuses
 *       keys starting with "deny"). A two-phase update accepted by both, one refused by
 *       ledger-b (the error must name it and carry its reason; nothing is written), one
 *       prepared and rolled back, one prepared and committed; checks both replicas, the
 *       publisher's list of subscribers, that each replica verifies in agreement with the
 *       publisher (mcsync_subscriber_verify), and retention.
 *
 *   test_mcsync misuse WORKDIR GROUP PORT
 *       NULL handles, invalid arguments and configuration, wrong credentials, double close,
 *       use after close, and callbacks that close or free their own subscription (or close
 *       the whole subscriber): each must give the documented status and a message, never a
 *       crash or a deadlock.
 *
 *   test_mcsync users WORKDIR GROUP PORT
 *       Writes a users file with mcsync_users_add (a user restricted to one database and an
 *       access group, and a two-phase participant with every database), opens a TLS
 *       publisher on it, and checks that each user logs in and gets exactly its grant:
 *       its databases, its groups' records, participation; a wrong password is refused.
 *       Bad arguments (NULL strings and arrays, an empty password, names with spaces or
 *       commas, a user already in the file) are status codes with messages, and leave the
 *       file as it was.
 *
 * Prints "PASS ..." and exits 0, or prints "FAIL ..." and exits 1.
 */
#define _POSIX_C_SOURCE 200809L

#include "mcsync.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---------------------------------------------------------------- helpers */

static const char *g_mode = "?";

static void fail_at(int line, const char *what, mcsync_status st)
{
    char msg[512];
    mcsync_last_error(msg, sizeof msg, NULL);
    printf("FAIL %s (test_mcsync.c:%d): %s -> %d (%s): %s\n", g_mode, line, what, (int)st,
           mcsync_status_str((int)st), msg);
    fflush(stdout);
    exit(1);
}

/* A call that must succeed. */
#define CHECK(call)                                                                          \
    do {                                                                                     \
        mcsync_status st_ = (call);                                                          \
        if (st_ != MCSYNC_OK)                                                                \
            fail_at(__LINE__, #call, st_);                                                   \
    } while (0)

/* A call that must fail with `want` and leave a non-empty message. */
#define EXPECT(call, want) expect_status(__LINE__, #call, (call), (want))

/* A plain condition. */
#define ASSERT(cond)                                                                         \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            printf("FAIL %s (test_mcsync.c:%d): %s\n", g_mode, __LINE__, #cond);             \
            fflush(stdout);                                                                  \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static int g_expectations;

static void expect_status(int line, const char *what, mcsync_status got, mcsync_status want)
{
    char msg[512] = "";
    size_t written = 0;
    if (got != want) {
        mcsync_last_error(msg, sizeof msg, NULL);
        printf("FAIL %s (test_mcsync.c:%d): %s -> %d (%s), expected %d (%s); last error: %s\n",
               g_mode, line, what, (int)got, mcsync_status_str((int)got), (int)want,
               mcsync_status_str((int)want), msg);
        fflush(stdout);
        exit(1);
    }
    if (want != MCSYNC_OK) {
        mcsync_last_error(msg, sizeof msg, &written);
        if (written == 0 || strlen(msg) != written) {
            printf("FAIL %s (test_mcsync.c:%d): %s gave no error message\n", g_mode, line, what);
            exit(1);
        }
    }
    g_expectations++;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void path_join(char *out, size_t len, const char *dir, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

static uint64_t stat_of(mcsync_stats *stats, const char *name)
{
    uint64_t v = 0;
    CHECK(mcsync_stats_get(stats, name, &v));
    return v;
}

/* A counter of a subscription; 0 if this version of the library does not have it. */
static uint64_t subscription_stat(const mcsync_subscription *sub, const char *name)
{
    mcsync_stats *stats = NULL;
    uint64_t v = 0;
    CHECK(mcsync_subscription_stats(sub, &stats));
    mcsync_status st = mcsync_stats_get(stats, name, &v);
    if (st != MCSYNC_ERR_NOT_FOUND)
        CHECK(st);
    mcsync_stats_free(stats);
    return v;
}

/* ---------------------------------------------------------------- callbacks */

enum close_mode { CLOSE_NEVER, CLOSE_SUBSCRIPTION, FREE_SUBSCRIPTION, CLOSE_SUBSCRIBER };

/* What a subscription's callback saw. Shared between the process thread and main. */
typedef struct recorder {
    pthread_mutex_t lock;
    uint64_t calls;
    uint64_t last_version;
    uint64_t ops;
    int out_of_order;
    int bad_update;
    int freed;
    /* Misuse: at `close_at`, the callback closes/frees its own subscription or subscriber. */
    enum close_mode mode;
    uint64_t close_at;
    mcsync_subscription *self;
    mcsync_subscriber *subscriber;
    int close_status;
    uint64_t calls_after_close;
    int closed;
} recorder;

static void recorder_init(recorder *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
}

static void on_update(void *user_data, const mcsync_update *u)
{
    recorder *r = user_data;
    pthread_mutex_lock(&r->lock);
    if (r->closed)
        r->calls_after_close++;
    r->calls++;
    if (u->version != r->last_version + 1)
        r->out_of_order++;
    r->last_version = u->version;
    r->ops += u->ops_len;
    if (u->ops_len > 0 && u->ops == NULL)
        r->bad_update++;
    for (size_t i = 0; i < u->ops_len; i++) {
        const mcsync_op *op = &u->ops[i];
        if (op->key == NULL || op->key_len == 0)
            r->bad_update++;
        if (op->kind == MCSYNC_OP_DELETE && op->value_len != 0)
            r->bad_update++;
        for (size_t g = 0; g < op->groups_len; g++)
            if (op->groups[g] == NULL || op->groups[g][0] == '\0')
                r->bad_update++;
    }
    int act = r->mode != CLOSE_NEVER && !r->closed && u->version >= r->close_at;
    pthread_mutex_unlock(&r->lock);
    if (!act)
        return;
    /* Close from inside our own callback: must return at once, without deadlock. */
    mcsync_status st = MCSYNC_OK;
    switch (r->mode) {
    case CLOSE_SUBSCRIPTION:
        st = mcsync_subscription_close(r->self);
        break;
    case FREE_SUBSCRIPTION:
        mcsync_subscription_free(r->self);
        break;
    case CLOSE_SUBSCRIBER:
        st = mcsync_subscriber_close(r->subscriber);
        break;
    case CLOSE_NEVER:
        break;
    }
    pthread_mutex_lock(&r->lock);
    r->close_status = (int)st;
    r->closed = 1;
    pthread_mutex_unlock(&r->lock);
}

static void on_free(void *user_data)
{
    recorder *r = user_data;
    pthread_mutex_lock(&r->lock);
    r->freed++;
    pthread_mutex_unlock(&r->lock);
}

static int recorder_get(recorder *r, int *field)
{
    pthread_mutex_lock(&r->lock);
    int v = *field;
    pthread_mutex_unlock(&r->lock);
    return v;
}

/* ---------------------------------------------------------------- authentication */

/* Users the test publisher knows: alice holds access group "ops", bob none, both may be
 * two-phase participants; "limited" may subscribe to database "quiet" only, and "reader"
 * to every database but not as a participant. Runs on the publisher's connection threads. */
static int authenticate(void *user_data, const char *user, const char *secret,
                        const char *peer, mcsync_grant *grant)
{
    int *calls = user_data;
    __atomic_add_fetch(calls, 1, __ATOMIC_SEQ_CST);
    if (strncmp(peer, "127.", 4) != 0)
        return MCSYNC_ERR_AUTH;
    if (strcmp(user, "alice") == 0 && strcmp(secret, "alice-secret") == 0) {
        mcsync_status st = mcsync_grant_add_group(grant, "ops");
        return st != MCSYNC_OK ? st : mcsync_grant_allow_participant(grant);
    }
    if (strcmp(user, "bob") == 0 && strcmp(secret, "bob-secret") == 0)
        return mcsync_grant_allow_participant(grant);
    if (strcmp(user, "reader") == 0 && strcmp(secret, "reader-secret") == 0)
        return MCSYNC_OK;
    if (strcmp(user, "limited") == 0 && strcmp(secret, "limited-secret") == 0)
        return mcsync_grant_allow_database(grant, "quiet");
    return MCSYNC_ERR_AUTH;
}

static int g_auth_freed;

static void free_auth(void *user_data)
{
    (void)user_data;
    __atomic_add_fetch(&g_auth_freed, 1, __ATOMIC_SEQ_CST);
}

/* ---------------------------------------------------------------- setup */

static int g_auth_calls;

/* A TLS publisher (self-signed certificate) authenticating with the callback above. */
static mcsync_publisher *open_publisher(const char *dir, const char *group, int port)
{
    mcsync_publisher_config *cfg = NULL;
    mcsync_publisher *pub = NULL;
    CHECK(mcsync_publisher_config_new(&cfg));
    CHECK(mcsync_publisher_config_set_data_dir(cfg, dir));
    CHECK(mcsync_publisher_config_set_group(cfg, group));
    CHECK(mcsync_publisher_config_set_port(cfg, (uint16_t)port));
    CHECK(mcsync_publisher_config_set_interface(cfg, "127.0.0.1"));
    CHECK(mcsync_publisher_config_set_control_addr(cfg, "127.0.0.1:0"));
    CHECK(mcsync_publisher_config_set_ttl(cfg, 0));
    CHECK(mcsync_publisher_config_set_tls_self_signed(cfg));
    CHECK(mcsync_publisher_config_set_authenticator(cfg, authenticate, &g_auth_calls, free_auth));
    CHECK(mcsync_publisher_config_set_max_unicast_targets(cfg, 4));
    CHECK(mcsync_publisher_open(cfg, &pub));
    mcsync_publisher_config_free(cfg);
    return pub;
}

/* A subscriber of `pub`, pinning its certificate, logging in as `user`, giving the
 * publisher `client_name` (NULL: the default); unicast-only (pushed to, not joining the
 * group) if `unicast`. */
static mcsync_subscriber *open_subscriber_with(const char *dir, const mcsync_publisher *pub,
                                               const char *user, const char *secret, double loss,
                                               uint64_t seed, const char *client_name,
                                               bool unicast)
{
    char addr[64], fingerprint[65];
    size_t n = 0;
    CHECK(mcsync_publisher_control_addr(pub, addr, sizeof addr, &n));
    ASSERT(n == strlen(addr));
    CHECK(mcsync_publisher_fingerprint(pub, fingerprint, sizeof fingerprint, &n));
    ASSERT(n == 64);
    mcsync_subscriber_config *cfg = NULL;
    mcsync_subscriber *sub = NULL;
    CHECK(mcsync_subscriber_config_new(&cfg));
    CHECK(mcsync_subscriber_config_set_data_dir(cfg, dir));
    CHECK(mcsync_subscriber_config_set_server(cfg, addr));
    CHECK(mcsync_subscriber_config_set_trust_fingerprint(cfg, fingerprint));
    CHECK(mcsync_subscriber_config_set_credentials(cfg, user, secret));
    CHECK(mcsync_subscriber_config_set_interface(cfg, "127.0.0.1"));
    if (loss > 0)
        CHECK(mcsync_subscriber_config_set_loss(cfg, loss, 1, seed));
    if (client_name != NULL)
        CHECK(mcsync_subscriber_config_set_client_name(cfg, client_name));
    CHECK(mcsync_subscriber_config_set_unicast(cfg, unicast));
    CHECK(mcsync_subscriber_open(cfg, &sub));
    mcsync_subscriber_config_free(cfg);
    return sub;
}

static mcsync_subscriber *open_subscriber_as(const char *dir, const mcsync_publisher *pub,
                                             const char *user, const char *secret, double loss,
                                             uint64_t seed, const char *client_name)
{
    return open_subscriber_with(dir, pub, user, secret, loss, seed, client_name, false);
}

static mcsync_subscriber *open_subscriber(const char *dir, const mcsync_publisher *pub,
                                          const char *user, const char *secret, double loss,
                                          uint64_t seed)
{
    return open_subscriber_as(dir, pub, user, secret, loss, seed, NULL);
}

/* ---------------------------------------------------------------- converge */

#define NKEYS 200

/* What the replicas must hold: the result of every write, in order. */
typedef struct model {
    uint8_t *value[NKEYS];
    size_t len[NKEYS];
    int present[NKEYS];
} model;

static void key_name(char *out, size_t len, int k)
{
    snprintf(out, len, "key-%05d", k);
}

static size_t make_value(uint8_t *buf, uint64_t i)
{
    /* Mostly small values; every 40th spans several datagrams. */
    size_t len = (i % 40 == 0) ? 5000 + (size_t)(i % 700) : 1 + (size_t)((i * 37) % 900);
    int head = snprintf((char *)buf, len, "v%llu:", (unsigned long long)i);
    for (size_t j = (size_t)(head > 0 ? head : 0); j < len; j++)
        buf[j] = (uint8_t)('a' + (i + j) % 26);
    return len;
}

static void model_put(model *m, int k, const uint8_t *v, size_t len)
{
    free(m->value[k]);
    m->value[k] = malloc(len ? len : 1);
    ASSERT(m->value[k] != NULL);
    memcpy(m->value[k], v, len);
    m->len[k] = len;
    m->present[k] = 1;
}

static void model_delete(model *m, int k)
{
    free(m->value[k]);
    m->value[k] = NULL;
    m->len[k] = 0;
    m->present[k] = 0;
}

/* Writes update number i (versions are i + 1) through the publisher and into the models:
 * m[0] is what a holder of group "ops" sees, m[1] what a subscriber without groups sees
 * (records restricted to groups are absent from its replica). */
static uint64_t publish_one(const mcsync_db *db, model m[2], uint64_t i, uint8_t *buf)
{
    char key[32];
    uint64_t version = 0;
    unsigned r = (unsigned)(i % 10);
    if (r <= 5) {
        int k = (int)((i * 7) % NKEYS);
        size_t len = make_value(buf, i);
        key_name(key, sizeof key, k);
        CHECK(mcsync_db_put(db, (const uint8_t *)key, strlen(key), buf, len, &version));
        model_put(&m[0], k, buf, len);
        model_put(&m[1], k, buf, len);
    } else if (r == 6) {
        int k = (int)((i * 13) % NKEYS);
        key_name(key, sizeof key, k);
        CHECK(mcsync_db_delete(db, (const uint8_t *)key, strlen(key), &version));
        model_delete(&m[0], k);
        model_delete(&m[1], k);
    } else {
        /* A transaction: put, put readable by two groups, delete; one version. */
        static const char *const groups[] = {"ops", "audit"};
        int k1 = (int)((i * 3) % NKEYS), k2 = (int)((i * 5 + 1) % NKEYS);
        int k3 = (int)((i * 11 + 2) % NKEYS);
        mcsync_txn *txn = NULL;
        CHECK(mcsync_txn_begin(db, &txn));
        size_t len = make_value(buf, i);
        key_name(key, sizeof key, k1);
        CHECK(mcsync_txn_put(txn, (const uint8_t *)key, strlen(key), buf, len));
        model_put(&m[0], k1, buf, len);
        model_put(&m[1], k1, buf, len);
        key_name(key, sizeof key, k2);
        CHECK(mcsync_txn_put_with_groups(txn, (const uint8_t *)key, strlen(key), buf, 10, groups,
                                         2));
        model_put(&m[0], k2, buf, 10);
        model_delete(&m[1], k2); /* withheld: stored as a delete */
        key_name(key, sizeof key, k3);
        CHECK(mcsync_txn_delete(txn, (const uint8_t *)key, strlen(key)));
        model_delete(&m[0], k3);
        model_delete(&m[1], k3);
        CHECK(mcsync_txn_commit(txn, &version));
    }
    return version;
}

/* Checks a replica against the model, through the iterator and both get variants. */
static size_t verify_replica(const char *label, const mcsync_subscription *sub, const model *m)
{
    mcsync_subscription_iter *it = NULL;
    CHECK(mcsync_subscription_iter_new(sub, &it));
    size_t count = 0, expected = 0, seen = 0;
    CHECK(mcsync_subscription_iter_count(it, &count));
    for (int k = 0; k < NKEYS; k++)
        expected += (size_t)m->present[k];
    int previous = -1;
    for (;;) {
        const uint8_t *key = NULL, *value = NULL;
        size_t key_len = 0, value_len = 0;
        bool has = false;
        CHECK(mcsync_subscription_iter_next(it, &key, &key_len, &value, &value_len, &has));
        if (!has)
            break;
        char name[32] = "";
        ASSERT(key_len < sizeof name);
        memcpy(name, key, key_len);
        int k = -1;
        ASSERT(sscanf(name, "key-%05d", &k) == 1 && k >= 0 && k < NKEYS);
        ASSERT(k > previous); /* key order */
        previous = k;
        if (!m->present[k] || m->len[k] != value_len ||
            (value_len && memcmp(m->value[k], value, value_len) != 0)) {
            printf("FAIL converge: %s holds a wrong record %s (len %zu, expected %s len %zu)\n",
                   label, name, value_len, m->present[k] ? "present" : "absent", m->len[k]);
            exit(1);
        }
        seen++;
    }
    mcsync_subscription_iter_free(it);
    if (seen != expected || count != expected) {
        printf("FAIL converge: %s has %zu records (iter count %zu), expected %zu\n", label, seen,
               count, expected);
        exit(1);
    }

    /* Point lookups: library buffer, caller buffer, missing key. */
    for (int k = 0; k < NKEYS; k++) {
        char key[32];
        key_name(key, sizeof key, k);
        uint8_t *value = (uint8_t *)0x1; /* must stay untouched on failure */
        size_t len = 12345;
        mcsync_status st = mcsync_subscription_get(sub, (const uint8_t *)key, strlen(key), &value,
                                                   &len);
        if (!m->present[k]) {
            EXPECT(st, MCSYNC_ERR_NOT_FOUND);
            ASSERT(value == (uint8_t *)0x1 && len == 12345);
            continue;
        }
        CHECK(st);
        ASSERT(len == m->len[k] && memcmp(value, m->value[k], len) == 0);
        ASSERT(value[len] == '\0'); /* documented trailing NUL */
        mcsync_bytes_free(value);

        size_t needed = 0;
        EXPECT(mcsync_subscription_get_into(sub, (const uint8_t *)key, strlen(key), NULL, 0,
                                            &needed),
               MCSYNC_ERR_BUFFER_TOO_SMALL);
        ASSERT(needed == m->len[k]);
        uint8_t *buf = malloc(needed);
        size_t got = 0;
        CHECK(mcsync_subscription_get_into(sub, (const uint8_t *)key, strlen(key), buf, needed,
                                           &got));
        ASSERT(got == needed && memcmp(buf, m->value[k], got) == 0);
        free(buf);
    }
    return seen;
}

static int run_converge(const char *workdir, const char *group, int port, uint64_t updates)
{
    static const char *const users[2][2] = {{"alice", "alice-secret"}, {"bob", "bob-secret"}};
    char dir[4096];

    path_join(dir, sizeof dir, workdir, "publisher");
    mcsync_publisher *pub = open_publisher(dir, group, port);
    mcsync_db *db = NULL;
    CHECK(mcsync_publisher_database(pub, "inventory", &db));

    mcsync_subscriber *subscriber[2];
    mcsync_subscription *sub[2];
    recorder rec[2];
    for (int s = 0; s < 2; s++) {
        char name[32];
        snprintf(name, sizeof name, "subscriber%d", s + 1);
        path_join(dir, sizeof dir, workdir, name);
        /* Subscriber 2 is unicast-only: the publisher pushes the stream to it. */
        subscriber[s] = open_subscriber_with(dir, pub, users[s][0], users[s][1], 0.05,
                                             1000 + (uint64_t)s, NULL, s == 1);
        recorder_init(&rec[s]);
        CHECK(mcsync_subscriber_subscribe(subscriber[s], "inventory", on_update, &rec[s], on_free,
                                          &sub[s]));
    }

    static model m[2];
    uint8_t *buf = calloc(1, 8192);
    ASSERT(buf != NULL);
    uint64_t version = 0;
    for (uint64_t i = 0; i < updates; i++) {
        version = publish_one(db, m, i, buf);
        ASSERT(version == i + 1);
    }
    free(buf);
    uint64_t db_version = 0;
    CHECK(mcsync_db_version(db, &db_version));
    ASSERT(db_version == version);

    for (int s = 0; s < 2; s++) {
        /* Subscriber 1 waits for the version the publisher has now without being told it. */
        uint64_t current = 0;
        mcsync_status st = s == 0 ? mcsync_subscription_wait_until_current(sub[s], 180000, &current)
                                  : mcsync_subscription_wait_for_version(sub[s], version, 180000);
        ASSERT(s == 1 || st != MCSYNC_OK || current == version);
        if (st != MCSYNC_OK) {
            uint64_t at = 0;
            mcsync_subscription_version(sub[s], &at);
            printf("note: subscriber%d at version %llu of %llu\n", s + 1, (unsigned long long)at,
                   (unsigned long long)version);
            fail_at(__LINE__, "mcsync_subscription_wait_for_version", st);
        }
        uint64_t at = 0;
        CHECK(mcsync_subscription_version(sub[s], &at));
        ASSERT(at == version);
    }

    size_t records[2];
    uint64_t dropped[2], repairs[2];
    for (int s = 0; s < 2; s++) {
        char label[32];
        snprintf(label, sizeof label, "subscriber%d", s + 1);
        records[s] = verify_replica(label, sub[s], &m[s]);
        pthread_mutex_lock(&rec[s].lock);
        ASSERT(rec[s].calls == version);
        ASSERT(rec[s].last_version == version);
        ASSERT(rec[s].out_of_order == 0);
        ASSERT(rec[s].bad_update == 0);
        pthread_mutex_unlock(&rec[s].lock);
        dropped[s] = subscription_stat(sub[s], "dropped_injected");
        repairs[s] = subscription_stat(sub[s], "repairs_requested") +
                     subscription_stat(sub[s], "packet_repairs_requested");
        ASSERT(subscription_stat(sub[s], "updates_applied") >= version);
    }
    /* The injected loss happened (5 % of hundreds of packets) and was repaired. */
    ASSERT(dropped[0] > 0 && dropped[1] > 0);
    /* Subscriber 2 received everything by push, subscriber 1 nothing. */
    ASSERT(subscription_stat(sub[1], "unicast_datagrams") > 0);
    ASSERT(subscription_stat(sub[1], "unicast_datagrams") ==
           subscription_stat(sub[1], "packets_received"));
    ASSERT(subscription_stat(sub[0], "unicast_datagrams") == 0);
    /* Access groups: subscriber 2 (no groups) had records withheld, subscriber 1 none. */
    ASSERT(subscription_stat(sub[1], "updates_filtered") > 0 || updates < 10);
    ASSERT(subscription_stat(sub[0], "updates_filtered") == 0);

    mcsync_stats *pstats = NULL;
    CHECK(mcsync_publisher_stats(pub, &pstats));
    ASSERT(stat_of(pstats, "updates_committed") == version);
    ASSERT(stat_of(pstats, "unicast_datagrams") > 0);
    ASSERT(stat_of(pstats, "unicast_targets") == 1);
    size_t nstats = 0;
    CHECK(mcsync_stats_count(pstats, &nstats));
    ASSERT(nstats > 0);
    const char *first = NULL;
    uint64_t first_value = 0;
    CHECK(mcsync_stats_entry(pstats, 0, &first, &first_value));
    ASSERT(first != NULL && first[0] != '\0');
    mcsync_stats_free(pstats);

    for (int s = 0; s < 2; s++) {
        if (s == 1) {
            /* The subscriber freed first: its subscription can no longer ask the publisher,
             * and stays readable. */
            mcsync_subscriber_free(subscriber[s]);
            ASSERT(recorder_get(&rec[s], &rec[s].freed) == 1);
            EXPECT(mcsync_subscription_wait_until_current(sub[s], 1000, NULL), MCSYNC_ERR_CLOSED);
            uint64_t at = 0;
            CHECK(mcsync_subscription_version(sub[s], &at));
            ASSERT(at == version);
        }
        CHECK(mcsync_subscription_close(sub[s]));
        mcsync_subscription_free(sub[s]);
        ASSERT(recorder_get(&rec[s], &rec[s].freed) == 1);
        if (s == 0)
            mcsync_subscriber_free(subscriber[s]);
    }
    mcsync_db_free(db);
    CHECK(mcsync_publisher_close(pub));
    mcsync_publisher_free(pub);
    for (int k = 0; k < NKEYS; k++) {
        free(m[0].value[k]);
        free(m[1].value[k]);
    }
    /* The authenticator was used, and freed once the publisher was. */
    ASSERT(__atomic_load_n(&g_auth_calls, __ATOMIC_SEQ_CST) >= 2);
    ASSERT(__atomic_load_n(&g_auth_freed, __ATOMIC_SEQ_CST) == 1);
    for (int s = 0; s < 2; s++)
        pthread_mutex_destroy(&rec[s].lock);

    printf("PASS converge: 1 publisher, 2 subscribers at version %llu with %zu and %zu records "
           "matching their access groups; injected drops %llu/%llu, repair requests %llu/%llu\n",
           (unsigned long long)version, records[0], records[1], (unsigned long long)dropped[0],
           (unsigned long long)dropped[1], (unsigned long long)repairs[0],
           (unsigned long long)repairs[1]);
    return 0;
}

/* ---------------------------------------------------------------- two-phase */

/* A two-phase participant: its vote refuses every update writing a key that starts with
 * `deny_prefix` (NULL: accepts everything). Shared between the process thread and main. */
typedef struct voter {
    pthread_mutex_t lock;
    const char *deny_prefix;
    uint64_t votes;
    uint64_t refusals;
    uint64_t applied;       /* update callbacks */
    uint64_t denied_applied; /* updates applied that hold a denied key: must stay 0 */
    uint64_t last_version;
    int freed;
} voter;

static int has_prefix(const mcsync_op *op, const char *prefix)
{
    size_t n = strlen(prefix);
    return op->key_len >= n && memcmp(op->key, prefix, n) == 0;
}

/* The vote: runs on the participant's process thread before anything of the update is
 * visible. Non-zero refuses, with a reason written into mcsync's buffer. */
static int on_vote(void *user_data, const mcsync_update *u, char *reason, size_t reason_len)
{
    voter *v = user_data;
    const mcsync_op *denied = NULL;
    for (size_t i = 0; i < u->ops_len && v->deny_prefix != NULL; i++)
        if (has_prefix(&u->ops[i], v->deny_prefix))
            denied = &u->ops[i];
    pthread_mutex_lock(&v->lock);
    v->votes++;
    if (denied != NULL)
        v->refusals++;
    pthread_mutex_unlock(&v->lock);
    if (denied == NULL)
        return 0;
    ASSERT(reason != NULL && reason_len == MCSYNC_VOTE_REASON_BYTES);
    snprintf(reason, reason_len, "key %.*s is on the deny list", (int)denied->key_len,
             (const char *)denied->key);
    return 1;
}

static void on_participant_update(void *user_data, const mcsync_update *u)
{
    voter *v = user_data;
    pthread_mutex_lock(&v->lock);
    v->applied++;
    v->last_version = u->version;
    for (size_t i = 0; i < u->ops_len; i++)
        if (has_prefix(&u->ops[i], "deny"))
            v->denied_applied++;
    pthread_mutex_unlock(&v->lock);
}

static void on_voter_free(void *user_data)
{
    voter *v = user_data;
    pthread_mutex_lock(&v->lock);
    v->freed++;
    pthread_mutex_unlock(&v->lock);
}

static uint64_t voter_get(voter *v, uint64_t *field)
{
    pthread_mutex_lock(&v->lock);
    uint64_t x = *field;
    pthread_mutex_unlock(&v->lock);
    return x;
}

static mcsync_txn *txn_with(const mcsync_db *db, const char *key, const char *value)
{
    mcsync_txn *txn = NULL;
    CHECK(mcsync_txn_begin(db, &txn));
    CHECK(mcsync_txn_put(txn, (const uint8_t *)key, strlen(key), (const uint8_t *)value,
                         strlen(value)));
    return txn;
}

static int replica_has(const mcsync_subscription *sub, const char *key)
{
    size_t len = 0;
    mcsync_status st = mcsync_subscription_get_into(sub, (const uint8_t *)key, strlen(key), NULL,
                                                    0, &len);
    if (st == MCSYNC_ERR_NOT_FOUND)
        return 0;
    ASSERT(st == MCSYNC_OK || st == MCSYNC_ERR_BUFFER_TOO_SMALL);
    return 1;
}

/* Two C participants vote on two-phase updates: one accepted by both, one refused by the
 * second (the error names it and its reason), one prepared and rolled back, one prepared
 * and committed. Then the publisher lists both participants, each replica verifies in
 * agreement with the publisher, and retention runs. */
static int run_twophase(const char *workdir, const char *group, int port)
{
    /* Votes wait at most this long; generous, for valgrind. */
    const uint64_t vote_timeout_ms = 60000;
    static const char *const users[2][2] = {{"alice", "alice-secret"}, {"bob", "bob-secret"}};
    static const char *const clients[2] = {"ledger-a", "ledger-b"};
    char dir[4096];

    path_join(dir, sizeof dir, workdir, "publisher");
    mcsync_publisher *pub = open_publisher(dir, group, port);
    mcsync_db *db = NULL;
    CHECK(mcsync_publisher_database(pub, "ledger", &db));

    mcsync_subscriber *subscriber[2];
    mcsync_subscription *sub[2];
    static voter voters[2];
    for (int s = 0; s < 2; s++) {
        memset(&voters[s], 0, sizeof voters[s]);
        pthread_mutex_init(&voters[s].lock, NULL);
        voters[s].deny_prefix = s == 1 ? "deny" : NULL;
        path_join(dir, sizeof dir, workdir, clients[s]);
        subscriber[s] =
            open_subscriber_as(dir, pub, users[s][0], users[s][1], 0, 0, clients[s]);
        CHECK(mcsync_subscriber_subscribe_participant(subscriber[s], "ledger",
                                                      on_participant_update, on_vote, &voters[s],
                                                      on_voter_free, &sub[s]));
    }

    /* A user whose grant does not allow it cannot become a participant (and so cannot
     * veto); it may still subscribe as an ordinary replica. */
    path_join(dir, sizeof dir, workdir, "reader");
    mcsync_subscriber *reader = open_subscriber_as(dir, pub, "reader", "reader-secret", 0, 0,
                                                   "reader");
    mcsync_subscription *refused = (mcsync_subscription *)0x1;
    EXPECT(mcsync_subscriber_subscribe_participant(reader, "ledger", NULL, NULL, NULL, NULL,
                                                   &refused),
           MCSYNC_ERR_AUTH);
    ASSERT(refused == (mcsync_subscription *)0x1);
    char why[512];
    mcsync_last_error(why, sizeof why, NULL);
    ASSERT(strstr(why, "may not register as a two-phase participant") != NULL);
    mcsync_subscriber_close(reader);
    mcsync_subscriber_free(reader);

    /* The publisher sees both, as participants, under their client names. */
    mcsync_subscriber_list *list = NULL;
    CHECK(mcsync_publisher_subscribers(pub, &list));
    size_t count = 0;
    CHECK(mcsync_subscriber_list_count(list, &count));
    ASSERT(count == 2);
    int seen_clients = 0;
    for (size_t i = 0; i < count; i++) {
        const mcsync_subscriber_info *info = NULL;
        CHECK(mcsync_subscriber_list_entry(list, i, &info));
        ASSERT(info->participant && strcmp(info->database, "ledger") == 0);
        ASSERT(strncmp(info->peer, "127.", 4) == 0 && info->sessions >= 1);
        for (int s = 0; s < 2; s++)
            if (strcmp(info->client, clients[s]) == 0 && strcmp(info->user, users[s][0]) == 0)
                seen_clients |= 1 << s;
    }
    ASSERT(seen_clients == 3);
    const mcsync_subscriber_info *none = NULL;
    EXPECT(mcsync_subscriber_list_entry(list, count, &none), MCSYNC_ERR_RANGE);
    ASSERT(none == NULL);
    mcsync_subscriber_list_free(list);

    /* 1. Accepted by both participants. */
    uint64_t v1 = 0;
    CHECK(mcsync_txn_commit_two_phase(txn_with(db, "balance", "100"), vote_timeout_ms, &v1));
    ASSERT(v1 == 1);

    /* 2. Refused by ledger-b: nothing is written, and the error says who and why. */
    uint64_t v = 77;
    EXPECT(mcsync_txn_commit_two_phase(txn_with(db, "deny-transfer", "5"), vote_timeout_ms, &v),
           MCSYNC_ERR_REFUSED);
    ASSERT(v == 77);
    char msg[512];
    mcsync_last_error(msg, sizeof msg, NULL);
    ASSERT(strstr(msg, "ledger-b (bob) refused") != NULL);
    ASSERT(strstr(msg, "key deny-transfer is on the deny list") != NULL);
    ASSERT(strstr(msg, "ledger-a") == NULL);
    printf("refused as expected: %s\n", msg);
    uint64_t at = 0;
    CHECK(mcsync_db_version(db, &at));
    ASSERT(at == v1);
    /* 3. The aborted version is given back: prepared again at once (repeats of the ABORT
     * may still arrive; they name the earlier round and leave this one alone), rolled back,
     * prepared a third time and committed. */
    mcsync_prepared *prepared = NULL;
    CHECK(mcsync_txn_prepare(txn_with(db, "pending", "x"), vote_timeout_ms, &prepared));
    uint64_t pv = 0;
    CHECK(mcsync_prepared_version(prepared, &pv));
    ASSERT(pv == v1 + 1);
    CHECK(mcsync_prepared_rollback(prepared));
    CHECK(mcsync_txn_prepare(txn_with(db, "balance", "250"), vote_timeout_ms, &prepared));
    CHECK(mcsync_prepared_version(prepared, &pv));
    ASSERT(pv == v1 + 1);
    uint64_t v2 = 0;
    CHECK(mcsync_prepared_commit(prepared, &v2));
    ASSERT(v2 == pv);

    /* Both replicas hold exactly the committed updates. */
    for (int s = 0; s < 2; s++) {
        CHECK(mcsync_subscription_wait_for_version(sub[s], v2, 120000));
        uint8_t *value = NULL;
        size_t len = 0;
        CHECK(mcsync_subscription_get(sub[s], (const uint8_t *)"balance", 7, &value, &len));
        ASSERT(len == 3 && memcmp(value, "250", 3) == 0);
        mcsync_bytes_free(value);
        ASSERT(!replica_has(sub[s], "deny-transfer") && !replica_has(sub[s], "pending"));
        ASSERT(voter_get(&voters[s], &voters[s].applied) == 2);
        ASSERT(voter_get(&voters[s], &voters[s].last_version) == v2);
        ASSERT(voter_get(&voters[s], &voters[s].denied_applied) == 0);
        /* Version 1, then three rounds of version 2 (refused, rolled back, committed): at
         * least three votes each (ledger-a may not have voted before ledger-b's refusal
         * aborted the first round of version 2). */
        ASSERT(voter_get(&voters[s], &voters[s].votes) >= 3);
        ASSERT(subscription_stat(sub[s], "votes_prepared") >= 3);
    }
    ASSERT(voter_get(&voters[0], &voters[0].refusals) == 0);
    ASSERT(voter_get(&voters[1], &voters[1].refusals) == 1);
    ASSERT(subscription_stat(sub[1], "votes_refused") == 1);

    /* 4. Each replica verifies in agreement with the publisher. */
    for (int s = 0; s < 2; s++) {
        mcsync_resync_report *report = NULL;
        CHECK(mcsync_subscriber_verify(subscriber[s], "ledger", &report));
        if (!report->in_agreement) {
            printf("FAIL twophase: %s disagrees with the publisher in %zu ranges "
                   "(replica v%llu, %llu records; publisher v%llu, %llu records)\n",
                   clients[s], report->differing_ranges_len,
                   (unsigned long long)report->previous_version,
                   (unsigned long long)report->local_records,
                   (unsigned long long)report->version,
                   (unsigned long long)report->remote_records);
            return 1;
        }
        ASSERT(report->differing_ranges_len == 0 && report->differing_ranges == NULL);
        ASSERT(report->version == v2 && report->previous_version == v2);
        ASSERT(report->local_records == 1 && report->remote_records == 1);
        ASSERT(report->fetched == 0 && report->deleted == 0 && report->bytes > 0);
        printf("verify %s: in agreement at version %llu, %llu record(s), %llu bytes exchanged\n",
               clients[s], (unsigned long long)report->version,
               (unsigned long long)report->local_records, (unsigned long long)report->bytes);
        mcsync_resync_report_free(report);
    }
    /* A one-shot resync needs the replica unsubscribed. */
    mcsync_resync_report *report = (mcsync_resync_report *)0x1;
    EXPECT(mcsync_subscriber_resync(subscriber[0], "ledger", &report), MCSYNC_ERR_CONFIG);
    ASSERT(report == (mcsync_resync_report *)0x1);

    /* 5. Retention with the defaults keeps these few entries. */
    uint64_t removed = 99;
    CHECK(mcsync_publisher_apply_retention(pub, &removed));
    ASSERT(removed == 0);

    for (int s = 0; s < 2; s++) {
        mcsync_subscription_free(sub[s]);
        pthread_mutex_lock(&voters[s].lock);
        ASSERT(voters[s].freed == 1);
        pthread_mutex_unlock(&voters[s].lock);
        mcsync_subscriber_free(subscriber[s]);
        pthread_mutex_destroy(&voters[s].lock);
    }
    mcsync_stats *pstats = NULL;
    CHECK(mcsync_publisher_stats(pub, &pstats));
    uint64_t committed = stat_of(pstats, "two_phase_committed");
    uint64_t aborted = stat_of(pstats, "two_phase_aborted");
    mcsync_stats_free(pstats);
    ASSERT(committed == 2 && aborted == 2);
    mcsync_db_free(db);
    CHECK(mcsync_publisher_close(pub));
    mcsync_publisher_free(pub);
    printf("PASS twophase: 2 C participants; one update committed by both, one refused by "
           "ledger-b with its reason in the error, one rolled back, one prepared and "
           "committed; both replicas at version %llu verify in agreement\n",
           (unsigned long long)v2);
    return 0;
}

/* ---------------------------------------------------------------- misuse */

static void misuse_null_handles(void)
{
    uint64_t v = 77;
    EXPECT(mcsync_publisher_open(NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_config_new(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_config_set_port(NULL, 5), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_database(NULL, "x", NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_close(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_db_put(NULL, (const uint8_t *)"k", 1, NULL, 0, &v), MCSYNC_ERR_NULL);
    ASSERT(v == 77);
    EXPECT(mcsync_db_delete(NULL, (const uint8_t *)"k", 1, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_db_version(NULL, &v), MCSYNC_ERR_NULL);
    EXPECT(mcsync_txn_begin(NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_txn_put(NULL, (const uint8_t *)"k", 1, NULL, 0), MCSYNC_ERR_NULL);
    EXPECT(mcsync_txn_commit(NULL, &v), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_open(NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_close(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscription_get(NULL, (const uint8_t *)"k", 1, NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscription_version(NULL, &v), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscription_wait_for_version(NULL, 1, 1), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscription_wait_until_current(NULL, 1, &v), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscription_close(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscription_iter_next(NULL, NULL, NULL, NULL, NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_stats_count(NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_fingerprint(NULL, NULL, 0, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_revoke(NULL, "x"), MCSYNC_ERR_NULL);
    EXPECT(mcsync_grant_add_group(NULL, "x"), MCSYNC_ERR_NULL);
    EXPECT(mcsync_txn_commit_two_phase(NULL, 10, &v), MCSYNC_ERR_NULL);
    mcsync_prepared *prepared = (mcsync_prepared *)0x1;
    EXPECT(mcsync_txn_prepare(NULL, 10, &prepared), MCSYNC_ERR_NULL);
    ASSERT(prepared == (mcsync_prepared *)0x1);
    EXPECT(mcsync_prepared_version(NULL, &v), MCSYNC_ERR_NULL);
    EXPECT(mcsync_prepared_commit(NULL, &v), MCSYNC_ERR_NULL);
    EXPECT(mcsync_prepared_rollback(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_apply_retention(NULL, &v), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_flush(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_config_set_async_commits(NULL, true), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_set_schedule_always(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_set_schedule_never(NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_set_schedule_windows(NULL, NULL, 0), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_subscribers(NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_list_count(NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_list_entry(NULL, 0, NULL), MCSYNC_ERR_NULL);
    mcsync_resync_report *report = (mcsync_resync_report *)0x1;
    EXPECT(mcsync_subscriber_verify(NULL, "db", &report), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_resync(NULL, "db", &report), MCSYNC_ERR_NULL);
    ASSERT(report == (mcsync_resync_report *)0x1);
    EXPECT(mcsync_subscription_request_resync(NULL), MCSYNC_ERR_NULL);
    ASSERT(v == 77);

    /* A NULL subscriber still takes ownership of user_data: free_user_data runs once. */
    recorder r;
    recorder_init(&r);
    mcsync_subscription *s = (mcsync_subscription *)0x1;
    EXPECT(mcsync_subscriber_subscribe(NULL, "db", on_update, &r, on_free, &s), MCSYNC_ERR_NULL);
    ASSERT(r.freed == 1 && s == (mcsync_subscription *)0x1);
    EXPECT(mcsync_subscriber_subscribe_participant(NULL, "db", on_update, NULL, &r, on_free, &s),
           MCSYNC_ERR_NULL);
    ASSERT(r.freed == 2 && s == (mcsync_subscription *)0x1);
    pthread_mutex_destroy(&r.lock);

    /* Freeing NULL is a no-op everywhere. */
    mcsync_publisher_config_free(NULL);
    mcsync_subscriber_config_free(NULL);
    mcsync_publisher_free(NULL);
    mcsync_db_free(NULL);
    mcsync_txn_discard(NULL);
    mcsync_subscriber_free(NULL);
    mcsync_subscription_free(NULL);
    mcsync_subscription_iter_free(NULL);
    mcsync_stats_free(NULL);
    mcsync_bytes_free(NULL);
    mcsync_subscriber_list_free(NULL);
    mcsync_resync_report_free(NULL);

    /* Status texts and the last-error buffer rules. */
    ASSERT(strcmp(mcsync_status_str(MCSYNC_OK), "ok") == 0);
    ASSERT(strcmp(mcsync_status_str(9999), "unknown status code") == 0);
    ASSERT(mcsync_version() != NULL && mcsync_version()[0] != '\0');
    char tiny[8];
    size_t written = 0;
    EXPECT(mcsync_subscription_close(NULL), MCSYNC_ERR_NULL);
    ASSERT(mcsync_last_error(tiny, sizeof tiny, &written) == MCSYNC_ERR_BUFFER_TOO_SMALL);
    ASSERT(written == 7 && strlen(tiny) == 7);
    ASSERT(mcsync_last_error(NULL, 10, NULL) == MCSYNC_ERR_NULL);
    char big[512];
    ASSERT(mcsync_last_error(big, sizeof big, NULL) == MCSYNC_OK);
    ASSERT(strstr(big, "NULL") != NULL);
}

static void misuse_config(const char *workdir)
{
    mcsync_publisher_config *pc = NULL;
    mcsync_subscriber_config *sc = NULL;
    CHECK(mcsync_publisher_config_new(&pc));
    CHECK(mcsync_subscriber_config_new(&sc));

    /* An authenticator setting that fails still takes (and frees) user_data. */
    int freed_before = __atomic_load_n(&g_auth_freed, __ATOMIC_SEQ_CST);
    EXPECT(mcsync_publisher_config_set_authenticator(pc, NULL, NULL, free_auth), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_config_set_authenticator(NULL, authenticate, NULL, free_auth),
           MCSYNC_ERR_NULL);
    ASSERT(__atomic_load_n(&g_auth_freed, __ATOMIC_SEQ_CST) == freed_before + 2);
    EXPECT(mcsync_publisher_config_set_tls_files(pc, "", "key.pem"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_set_max_unicast_targets(pc, 5000), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_config_set_group_range(pc, "239.1.0.0/33", "100"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_set_group_range(pc, "10.0.0.0/8", "100"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_set_group_range(pc, "239.1.0.0/24", "9-3"),
           MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_add_schedule_window(pc, 1440, 10), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_config_set_group(pc, "10.1.2.3"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_set_group(pc, "239.1.2"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_set_group(pc, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_publisher_config_set_control_addr(pc, "localhost"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_set_port(pc, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_config_set_ttl(pc, 256), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_config_set_datagram_bytes(pc, 10), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_config_set_heartbeat_ms(pc, 100, 10), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_config_set_max_update_bytes(pc, 5), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_config_set_data_dir(pc, "\xff\xfe/bad"), MCSYNC_ERR_UTF8);
    EXPECT(mcsync_publisher_config_set_data_dir(pc, ""), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_config_set_retention_max_age_ms(pc, UINT64_MAX), MCSYNC_ERR_RANGE);
    CHECK(mcsync_publisher_config_set_retention_max_age_ms(pc, 3600000));
    CHECK(mcsync_publisher_config_set_retention_max_bytes(pc, 0));
    CHECK(mcsync_publisher_config_set_retention_min_count(pc, 100));
    CHECK(mcsync_publisher_config_set_retention_min_free_disk_bytes(pc, 0));
    CHECK(mcsync_publisher_config_set_schedule_never(pc));
    EXPECT(mcsync_publisher_config_set_retention_min_count(NULL, 1), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_config_set_compact_catch_up_after(NULL, 1), MCSYNC_ERR_NULL);
    CHECK(mcsync_subscriber_config_set_compact_catch_up_after(sc, UINT64_MAX));

    /* Required settings missing: open fails and says which. */
    mcsync_publisher *p = (mcsync_publisher *)0x1;
    EXPECT(mcsync_publisher_open(pc, &p), MCSYNC_ERR_CONFIG);
    ASSERT(p == (mcsync_publisher *)0x1);
    char msg[512];
    mcsync_last_error(msg, sizeof msg, NULL);
    ASSERT(strstr(msg, "data directory") != NULL);

    EXPECT(mcsync_subscriber_config_set_loss(sc, 1.5, 1, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_subscriber_config_set_loss(sc, -0.1, 1, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_subscriber_config_set_loss(sc, NAN, 1, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_subscriber_config_set_loss(sc, 0.1, 0, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_subscriber_config_set_server(sc, "127.0.0.1"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_subscriber_config_set_server(sc, "127.0.0.1:0"), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_subscriber_config_set_channel_capacity(sc, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_subscriber_config_set_client_name(sc, "\xc3"), MCSYNC_ERR_UTF8);
    EXPECT(mcsync_subscriber_config_set_trust_fingerprint(sc, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_config_set_trust_fingerprint(sc, "ab:cd"), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_subscriber_config_set_credentials(sc, "user", NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_config_set_silence_timeout_ms(sc, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_subscriber_config_set_unicast(NULL, true), MCSYNC_ERR_NULL);
    char dir[4096];
    path_join(dir, sizeof dir, workdir, "misuse-config-sub");
    CHECK(mcsync_subscriber_config_set_data_dir(sc, dir));
    mcsync_subscriber *s = (mcsync_subscriber *)0x1;
    EXPECT(mcsync_subscriber_open(sc, &s), MCSYNC_ERR_CONFIG);
    ASSERT(s == (mcsync_subscriber *)0x1);
    mcsync_last_error(msg, sizeof msg, NULL);
    ASSERT(strstr(msg, "server address") != NULL);
    CHECK(mcsync_subscriber_config_set_server(sc, "127.0.0.1:9"));
    EXPECT(mcsync_subscriber_open(sc, &s), MCSYNC_ERR_CONFIG);
    mcsync_last_error(msg, sizeof msg, NULL);
    ASSERT(strstr(msg, "server trust") != NULL);
    ASSERT(s == (mcsync_subscriber *)0x1);

    mcsync_publisher_config_free(pc);
    mcsync_subscriber_config_free(sc);
}

static void wait_until_freed(recorder *r)
{
    for (int i = 0; i < 1000 && recorder_get(r, &r->freed) == 0; i++)
        sleep_ms(10);
    ASSERT(recorder_get(r, &r->freed) == 1);
}

/* A subscription whose callback closes (or frees) itself, or its subscriber, at version 3. */
static void misuse_self_close(const char *workdir, mcsync_publisher *pub, const char *dbname,
                              enum close_mode mode)
{
    char dir[4096];
    path_join(dir, sizeof dir, workdir, dbname);
    mcsync_db *db = NULL;
    CHECK(mcsync_publisher_database(pub, dbname, &db));
    mcsync_subscriber *subscriber = open_subscriber(dir, pub, "bob", "bob-secret", 0, 0);
    recorder r;
    recorder_init(&r);
    r.mode = mode;
    r.close_at = 3;
    r.subscriber = subscriber;
    mcsync_subscription *sub = NULL;
    pthread_mutex_lock(&r.lock); /* no callback may use r.self before it is set */
    CHECK(mcsync_subscriber_subscribe(subscriber, dbname, on_update, &r, on_free, &sub));
    r.self = sub;
    pthread_mutex_unlock(&r.lock);

    uint64_t version = 0;
    for (int i = 0; i < 10; i++)
        CHECK(mcsync_db_put(db, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1, &version));

    /* The callback closes at version 3: no deadlock, and no callback after the close. */
    for (int i = 0; i < 1000 && !recorder_get(&r, &r.closed); i++)
        sleep_ms(10);
    ASSERT(recorder_get(&r, &r.closed));
    ASSERT(r.close_status == MCSYNC_OK);
    if (mode != FREE_SUBSCRIPTION) {
        /* Waiting on a closed subscription for a version it will never reach reports it
         * closed, not a timeout. */
        EXPECT(mcsync_subscription_wait_for_version(sub, version + 1000, 5000),
               MCSYNC_ERR_CLOSED);
        EXPECT(mcsync_subscription_wait_until_current(sub, 5000, NULL), MCSYNC_ERR_CLOSED);
        bool closed = false;
        CHECK(mcsync_subscription_is_closed(sub, &closed));
        ASSERT(closed);
        CHECK(mcsync_subscription_close(sub)); /* double close */
        CHECK(mcsync_subscription_close(sub));
        EXPECT(mcsync_subscription_request_resync(sub), MCSYNC_ERR_CLOSED);
        uint64_t at = 0;
        CHECK(mcsync_subscription_version(sub, &at));
        /* Updates already received may still be applied (without callbacks). */
        ASSERT(at >= 3 && at <= version);
        /* The replica stays readable after close. */
        uint8_t *value = NULL;
        size_t len = 0;
        CHECK(mcsync_subscription_get(sub, (const uint8_t *)"k", 1, &value, &len));
        ASSERT(len == 1 && value[0] == 'v');
        mcsync_bytes_free(value);
        mcsync_subscription_free(sub);
    }
    wait_until_freed(&r);
    ASSERT(r.calls == 3 && r.calls_after_close == 0);
    if (mode == CLOSE_SUBSCRIBER) {
        /* Closed subscriber: double close is fine, new subscriptions and checks are refused. */
        CHECK(mcsync_subscriber_close(subscriber));
        mcsync_resync_report *report = NULL;
        EXPECT(mcsync_subscriber_verify(subscriber, dbname, &report), MCSYNC_ERR_CLOSED);
        ASSERT(report == NULL);
        recorder r2;
        recorder_init(&r2);
        mcsync_subscription *s2 = NULL;
        EXPECT(mcsync_subscriber_subscribe(subscriber, dbname, on_update, &r2, on_free, &s2),
               MCSYNC_ERR_CLOSED);
        ASSERT(r2.freed == 1 && s2 == NULL);
        pthread_mutex_destroy(&r2.lock);
    }
    mcsync_subscriber_free(subscriber);
    mcsync_db_free(db);
    pthread_mutex_destroy(&r.lock);
}

static void misuse_publisher(const char *workdir, mcsync_publisher *pub, const char *group,
                             int port)
{
    mcsync_db *db = (mcsync_db *)0x1;
    EXPECT(mcsync_publisher_database(pub, "has spaces", &db), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_publisher_database(pub, "bad\xff", &db), MCSYNC_ERR_UTF8);
    ASSERT(db == (mcsync_db *)0x1);
    CHECK(mcsync_publisher_database(pub, "misuse", &db));

    uint64_t v = 99;
    EXPECT(mcsync_db_put(db, NULL, 0, NULL, 0, &v), MCSYNC_ERR_CONFIG); /* empty key */
    EXPECT(mcsync_db_put(db, NULL, 3, NULL, 0, &v), MCSYNC_ERR_NULL);
    ASSERT(v == 99);
    mcsync_txn *txn = NULL;
    CHECK(mcsync_txn_begin(db, &txn));
    EXPECT(mcsync_txn_commit(txn, &v), MCSYNC_ERR_CONFIG); /* empty transaction; freed */
    ASSERT(v == 99);
    CHECK(mcsync_txn_begin(db, &txn));
    const char *bad_groups[] = {"ok", ""};
    EXPECT(mcsync_txn_put_with_groups(txn, (const uint8_t *)"k", 1, NULL, 0, bad_groups, 2),
           MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_txn_put_with_groups(txn, (const uint8_t *)"k", 1, NULL, 0, NULL, 1),
           MCSYNC_ERR_NULL);
    CHECK(mcsync_txn_put(txn, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1));
    mcsync_txn_discard(txn); /* nothing written */
    CHECK(mcsync_db_version(db, &v));
    ASSERT(v == 0);

    /* Two-phase: argument errors still free the transaction (valgrind checks); with no
     * participant registered, a two-phase update commits at once. */
    CHECK(mcsync_txn_begin(db, &txn));
    CHECK(mcsync_txn_put(txn, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1));
    EXPECT(mcsync_txn_commit_two_phase(txn, 3600001, &v), MCSYNC_ERR_RANGE);
    CHECK(mcsync_txn_begin(db, &txn));
    CHECK(mcsync_txn_put(txn, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1));
    EXPECT(mcsync_txn_prepare(txn, 1000, NULL), MCSYNC_ERR_NULL);
    CHECK(mcsync_txn_begin(db, &txn));
    mcsync_prepared *prepared = (mcsync_prepared *)0x1;
    EXPECT(mcsync_txn_prepare(txn, 1000, &prepared), MCSYNC_ERR_CONFIG); /* empty */
    ASSERT(prepared == (mcsync_prepared *)0x1);
    ASSERT(v == 0);
    CHECK(mcsync_txn_begin(db, &txn));
    CHECK(mcsync_txn_put(txn, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1));
    CHECK(mcsync_txn_commit_two_phase(txn, 0, &v));
    ASSERT(v == 1);

    /* Schedules at run time: bad windows leave the schedule unchanged. */
    mcsync_schedule_window windows[2] = {{480, 1020}, {1320, 1440}};
    CHECK(mcsync_publisher_set_schedule_windows(pub, windows, 2));
    windows[1].start_minute = 1440;
    EXPECT(mcsync_publisher_set_schedule_windows(pub, windows, 2), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_set_schedule_windows(pub, windows, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_publisher_set_schedule_windows(pub, NULL, 1), MCSYNC_ERR_NULL);
    CHECK(mcsync_publisher_set_schedule_never(pub));
    CHECK(mcsync_publisher_set_schedule_always(pub));

    /* Too large: a 2 KiB value against a 1 KiB update limit. */
    char dir[4096];
    path_join(dir, sizeof dir, workdir, "small-publisher");
    mcsync_publisher_config *pc = NULL;
    CHECK(mcsync_publisher_config_new(&pc));
    CHECK(mcsync_publisher_config_set_data_dir(pc, dir));
    CHECK(mcsync_publisher_config_set_insecure_loopback(pc));
    CHECK(mcsync_publisher_config_set_open_access(pc));
    CHECK(mcsync_publisher_config_set_max_update_bytes(pc, 1024));
    CHECK(mcsync_publisher_config_set_group(pc, group));
    CHECK(mcsync_publisher_config_set_port(pc, (uint16_t)port));
    CHECK(mcsync_publisher_config_set_interface(pc, "127.0.0.1"));
    CHECK(mcsync_publisher_config_set_ttl(pc, 0));
    mcsync_publisher *small = NULL;
    CHECK(mcsync_publisher_open(pc, &small));
    mcsync_publisher_config_free(pc);
    mcsync_db *sdb = NULL;
    CHECK(mcsync_publisher_database(small, "small", &sdb));
    /* Without TLS there is no fingerprint. */
    char fp[65];
    size_t fp_len = 0;
    EXPECT(mcsync_publisher_fingerprint(small, fp, sizeof fp, &fp_len), MCSYNC_ERR_NOT_FOUND);
    uint32_t epoch = 0, epoch2 = 0;
    CHECK(mcsync_db_key_epoch(sdb, &epoch));
    CHECK(mcsync_db_rotate_key(sdb, &epoch2));
    ASSERT(epoch2 > epoch);
    static uint8_t big[2048];
    EXPECT(mcsync_db_put(sdb, (const uint8_t *)"k", 1, big, sizeof big, NULL),
           MCSYNC_ERR_TOO_LARGE);

    /* Double close, then every call on the closed publisher and its databases. */
    CHECK(mcsync_publisher_close(small));
    CHECK(mcsync_publisher_close(small));
    EXPECT(mcsync_db_put(sdb, (const uint8_t *)"k", 1, NULL, 0, NULL), MCSYNC_ERR_CLOSED);
    mcsync_db *other = NULL;
    EXPECT(mcsync_publisher_database(small, "other", &other), MCSYNC_ERR_CLOSED);
    ASSERT(other == NULL);
    mcsync_publisher_free(small);
    /* The database handle outlives its publisher and still reports it closed. */
    EXPECT(mcsync_db_delete(sdb, (const uint8_t *)"k", 1, NULL), MCSYNC_ERR_CLOSED);
    mcsync_db_free(sdb);
    mcsync_db_free(db);
}

static int run_misuse(const char *workdir, const char *group, int port)
{
    char dir[4096];
    misuse_null_handles();
    misuse_config(workdir);

    path_join(dir, sizeof dir, workdir, "publisher");
    mcsync_publisher *pub = open_publisher(dir, group, port);
    misuse_publisher(workdir, pub, group, port + 1);
    char fp[65];
    size_t fp_len = 0;
    EXPECT(mcsync_publisher_fingerprint(pub, fp, 10, &fp_len), MCSYNC_ERR_BUFFER_TOO_SMALL);
    ASSERT(fp_len == 64);

    /* Subscribing to a database the publisher does not have is refused. */
    path_join(dir, sizeof dir, workdir, "refused");
    mcsync_subscriber *subscriber = open_subscriber(dir, pub, "bob", "bob-secret", 0, 0);
    mcsync_subscription *sub = NULL;
    EXPECT(mcsync_subscriber_subscribe(subscriber, "nosuchdb", NULL, NULL, NULL, &sub),
           MCSYNC_ERR_REFUSED);
    mcsync_resync_report *report = NULL;
    EXPECT(mcsync_subscriber_verify(subscriber, "nosuchdb", &report), MCSYNC_ERR_REFUSED);
    EXPECT(mcsync_subscriber_verify(subscriber, "bad name", &report), MCSYNC_ERR_CONFIG);
    ASSERT(report == NULL);
    /* Wrong secret, and a database outside the user's grant: authentication errors. */
    mcsync_db *db = NULL;
    CHECK(mcsync_publisher_database(pub, "quiet", &db));
    mcsync_db *other_db = NULL;
    CHECK(mcsync_publisher_database(pub, "other", &other_db));
    path_join(dir, sizeof dir, workdir, "wrong-secret");
    mcsync_subscriber *intruder = open_subscriber(dir, pub, "bob", "guess", 0, 0);
    EXPECT(mcsync_subscriber_subscribe(intruder, "quiet", NULL, NULL, NULL, &sub), MCSYNC_ERR_AUTH);
    mcsync_subscriber_free(intruder);
    path_join(dir, sizeof dir, workdir, "limited");
    mcsync_subscriber *limited = open_subscriber(dir, pub, "limited", "limited-secret", 0, 0);
    EXPECT(mcsync_subscriber_subscribe(limited, "other", NULL, NULL, NULL, &sub), MCSYNC_ERR_AUTH);
    CHECK(mcsync_subscriber_subscribe(limited, "quiet", NULL, NULL, NULL, &sub));
    mcsync_subscription_free(sub);
    mcsync_subscriber_free(limited);
    mcsync_db_free(other_db);

    /* A wait that cannot be satisfied times out. */
    CHECK(mcsync_subscriber_subscribe(subscriber, "quiet", NULL, NULL, NULL, &sub));
    EXPECT(mcsync_subscription_wait_for_version(sub, 1000, 100), MCSYNC_ERR_TIMEOUT);
    mcsync_subscription *dup = NULL;
    EXPECT(mcsync_subscriber_subscribe(subscriber, "quiet", NULL, NULL, NULL, &dup),
           MCSYNC_ERR_CONFIG); /* already subscribed */
    mcsync_subscription_iter *it = NULL;
    CHECK(mcsync_subscription_iter_new(sub, &it));
    bool has = true;
    const uint8_t *k = NULL, *v = NULL;
    size_t kl = 0, vl = 0;
    CHECK(mcsync_subscription_iter_next(it, &k, &kl, &v, &vl, &has));
    ASSERT(!has && k == NULL);
    mcsync_subscription_iter_free(it);
    mcsync_stats *stats = NULL;
    CHECK(mcsync_subscription_stats(sub, &stats));
    uint64_t value = 0;
    EXPECT(mcsync_stats_get(stats, "no_such_counter", &value), MCSYNC_ERR_NOT_FOUND);
    const char *name = NULL;
    EXPECT(mcsync_stats_entry(stats, 100000, &name, &value), MCSYNC_ERR_RANGE);
    mcsync_stats_free(stats);
    /* Freeing an open subscription closes it; freeing the subscriber afterwards is fine. */
    mcsync_subscription_free(sub);
    CHECK(mcsync_subscriber_close(subscriber));
    CHECK(mcsync_subscriber_close(subscriber));
    mcsync_subscriber_free(subscriber);
    mcsync_db_free(db);

    misuse_self_close(workdir, pub, "selfclose", CLOSE_SUBSCRIPTION);
    misuse_self_close(workdir, pub, "selffree", FREE_SUBSCRIPTION);
    misuse_self_close(workdir, pub, "parentclose", CLOSE_SUBSCRIBER);

    CHECK(mcsync_publisher_close(pub));
    CHECK(mcsync_publisher_close(pub));
    mcsync_publisher_free(pub);
    /* Two authenticators freed by failed setters, one when its publisher was freed. */
    ASSERT(__atomic_load_n(&g_auth_freed, __ATOMIC_SEQ_CST) == 3);
    printf("PASS misuse: %d expected error codes with messages; NULL handles, invalid config, "
           "wrong credentials, double close, use after close, callbacks closing/freeing their "
           "own subscription and subscriber\n",
           g_expectations);
    return 0;
}

/* ---------------------------------------------------------------- users */

/* The whole users file (at most `len` - 1 bytes), for comparing before and after. */
static void read_file(const char *path, char *out, size_t len)
{
    FILE *f = fopen(path, "r");
    ASSERT(f != NULL);
    size_t n = fread(out, 1, len - 1, f);
    out[n] = '\0';
    fclose(f);
}

static int run_users(const char *workdir, const char *group, int port)
{
    char dir[4096], users[4096];
    /* mcsync_users_add creates the file, not its directory. */
    ASSERT(mkdir(workdir, 0755) == 0 || errno == EEXIST);
    path_join(users, sizeof users, workdir, "users");
    const char *carol_dbs[] = {"inventory"};
    const char *carol_groups[] = {"emea"};
    CHECK(mcsync_users_add(users, "carol", "carol-pw", carol_dbs, 1, carol_groups, 1, false));
    CHECK(mcsync_users_add(users, "dave", "dave pw 2", NULL, 0, NULL, 0, true));

    /* Bad arguments: a status and a message each, never a crash; the file stays as it was. */
    static char before[8192], after[8192];
    read_file(users, before, sizeof before);
    const char *bad_group[] = {"two words"};
    const char *comma_group[] = {"a,b"};
    const char *empty_db[] = {"inventory", ""};
    const char *null_db[] = {NULL};
    EXPECT(mcsync_users_add(users, NULL, "pw", NULL, 0, NULL, 0, false), MCSYNC_ERR_NULL);
    EXPECT(mcsync_users_add(NULL, "erin", "pw", NULL, 0, NULL, 0, false), MCSYNC_ERR_NULL);
    EXPECT(mcsync_users_add(users, "erin", NULL, NULL, 0, NULL, 0, false), MCSYNC_ERR_NULL);
    EXPECT(mcsync_users_add(users, "erin", "", NULL, 0, NULL, 0, false), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_users_add(users, "", "pw", NULL, 0, NULL, 0, false), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_users_add(users, "erin smith", "pw", NULL, 0, NULL, 0, false),
           MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_users_add(users, "erin", "pw", NULL, 0, bad_group, 1, false),
           MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_users_add(users, "erin", "pw", NULL, 0, comma_group, 1, false),
           MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_users_add(users, "erin", "pw", empty_db, 2, NULL, 0, false), MCSYNC_ERR_CONFIG);
    EXPECT(mcsync_users_add(users, "erin", "pw", null_db, 1, NULL, 0, false), MCSYNC_ERR_NULL);
    EXPECT(mcsync_users_add(users, "erin", "pw", NULL, 2, NULL, 0, false), MCSYNC_ERR_NULL);
    EXPECT(mcsync_users_add(users, "erin", "pw", NULL, 0, NULL, 300, false), MCSYNC_ERR_NULL);
    EXPECT(mcsync_users_add(users, "carol", "other", NULL, 0, NULL, 0, false), MCSYNC_ERR_CONFIG);
    char no_dir[4096];
    path_join(no_dir, sizeof no_dir, workdir, "no/such/dir/users");
    EXPECT(mcsync_users_add(no_dir, "erin", "pw", NULL, 0, NULL, 0, false), MCSYNC_ERR_IO);
    read_file(users, after, sizeof after);
    ASSERT(strcmp(before, after) == 0);
    ASSERT(strstr(after, "carol-pw") == NULL); /* only hashes */

    /* A TLS publisher authenticating against that file. */
    path_join(dir, sizeof dir, workdir, "publisher");
    mcsync_publisher_config *cfg = NULL;
    mcsync_publisher *pub = NULL;
    CHECK(mcsync_publisher_config_new(&cfg));
    CHECK(mcsync_publisher_config_set_data_dir(cfg, dir));
    CHECK(mcsync_publisher_config_set_group(cfg, group));
    CHECK(mcsync_publisher_config_set_port(cfg, (uint16_t)port));
    CHECK(mcsync_publisher_config_set_interface(cfg, "127.0.0.1"));
    CHECK(mcsync_publisher_config_set_control_addr(cfg, "127.0.0.1:0"));
    CHECK(mcsync_publisher_config_set_ttl(cfg, 0));
    CHECK(mcsync_publisher_config_set_users_file(cfg, users));
    CHECK(mcsync_publisher_open(cfg, &pub));
    mcsync_publisher_config_free(cfg);
    mcsync_db *inventory = NULL, *other = NULL;
    CHECK(mcsync_publisher_database(pub, "inventory", &inventory));
    CHECK(mcsync_publisher_database(pub, "other", &other));
    uint64_t v = 0;
    const char *emea[] = {"emea"}, *apac[] = {"apac"};
    mcsync_txn *txn = txn_with(inventory, "everyone", "1");
    CHECK(mcsync_txn_put_with_groups(txn, (const uint8_t *)"for-emea", 8, (const uint8_t *)"2",
                                     1, emea, 1));
    CHECK(mcsync_txn_put_with_groups(txn, (const uint8_t *)"for-apac", 8, (const uint8_t *)"3",
                                     1, apac, 1));
    CHECK(mcsync_txn_commit(txn, &v));

    /* carol: inventory only, group emea, not a participant. */
    path_join(dir, sizeof dir, workdir, "carol");
    mcsync_subscriber *carol = open_subscriber(dir, pub, "carol", "carol-pw", 0, 0);
    mcsync_subscription *sub = NULL;
    EXPECT(mcsync_subscriber_subscribe(carol, "other", NULL, NULL, NULL, &sub), MCSYNC_ERR_AUTH);
    EXPECT(mcsync_subscriber_subscribe_participant(carol, "inventory", NULL, NULL, NULL, NULL,
                                                   &sub),
           MCSYNC_ERR_AUTH);
    CHECK(mcsync_subscriber_subscribe(carol, "inventory", NULL, NULL, NULL, &sub));
    CHECK(mcsync_subscription_wait_for_version(sub, v, 60000));
    ASSERT(replica_has(sub, "everyone") && replica_has(sub, "for-emea"));
    ASSERT(!replica_has(sub, "for-apac"));
    mcsync_subscription_free(sub);
    mcsync_subscriber_free(carol);

    /* A wrong password is refused. */
    path_join(dir, sizeof dir, workdir, "intruder");
    mcsync_subscriber *intruder = open_subscriber(dir, pub, "carol", "dave pw 2", 0, 0);
    EXPECT(mcsync_subscriber_subscribe(intruder, "inventory", NULL, NULL, NULL, &sub),
           MCSYNC_ERR_AUTH);
    mcsync_subscriber_free(intruder);

    /* dave: every database, no groups, a two-phase participant. */
    path_join(dir, sizeof dir, workdir, "dave");
    mcsync_subscriber *dave = open_subscriber(dir, pub, "dave", "dave pw 2", 0, 0);
    mcsync_subscription *dave_other = NULL;
    CHECK(mcsync_subscriber_subscribe(dave, "other", NULL, NULL, NULL, &dave_other));
    CHECK(mcsync_subscriber_subscribe_participant(dave, "inventory", NULL, NULL, NULL, NULL,
                                                  &sub));
    CHECK(mcsync_subscription_wait_for_version(sub, v, 60000));
    ASSERT(replica_has(sub, "everyone") && !replica_has(sub, "for-emea"));
    CHECK(mcsync_txn_commit_two_phase(txn_with(inventory, "voted", "4"), 60000, &v));
    CHECK(mcsync_subscription_wait_for_version(sub, v, 60000));
    ASSERT(replica_has(sub, "voted"));
    mcsync_subscription_free(dave_other);
    mcsync_subscription_free(sub);
    mcsync_subscriber_free(dave);

    mcsync_db_free(other);
    mcsync_db_free(inventory);
    CHECK(mcsync_publisher_close(pub));
    mcsync_publisher_free(pub);
    printf("PASS users: a users file written with mcsync_users_add grants each user its "
           "databases, groups and participation; %d expected error codes with messages\n",
           g_expectations);
    return 0;
}

/* ---------------------------------------------------------------- observe */

/* Log records the callback received (from any mcsync thread). */
typedef struct {
    pthread_mutex_t lock;
    int records, warnings;
    char fingerprint_line[512];
} log_sink;

static void on_log(mcsync_log_level level, const char *target, const char *message,
                   void *user_data)
{
    log_sink *s = user_data;
    pthread_mutex_lock(&s->lock);
    s->records++;
    if (level <= MCSYNC_LOG_WARN)
        s->warnings++;
    if (strstr(message, "fingerprint") && strncmp(target, "mcsync", 6) == 0)
        snprintf(s->fingerprint_line, sizeof s->fingerprint_line, "%s: %s", target, message);
    pthread_mutex_unlock(&s->lock);
}

/* The value of the first sample line starting with `series ` in an OpenMetrics text. */
static double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
    }
    return -1;
}

static int run_observe(const char *workdir, const char *group, int port)
{
    static log_sink sink = {.lock = PTHREAD_MUTEX_INITIALIZER};
    char dir[4096];
    EXPECT(mcsync_set_log_callback(on_log, &sink, 0), MCSYNC_ERR_RANGE);
    EXPECT(mcsync_set_log_callback(on_log, &sink, 6), MCSYNC_ERR_RANGE);
    CHECK(mcsync_set_log_callback(on_log, &sink, MCSYNC_LOG_INFO));

    path_join(dir, sizeof dir, workdir, "publisher");
    mcsync_publisher *pub = open_publisher(dir, group, port);
    char fingerprint[80];
    size_t fp_len = 0;
    CHECK(mcsync_publisher_fingerprint(pub, fingerprint, sizeof fingerprint, &fp_len));
    pthread_mutex_lock(&sink.lock);
    /* The publisher logs its address and fingerprint at INFO when it opens. */
    ASSERT(strstr(sink.fingerprint_line, fingerprint) != NULL);
    pthread_mutex_unlock(&sink.lock);

    mcsync_db *db = NULL;
    CHECK(mcsync_publisher_database(pub, "watched", &db));
    path_join(dir, sizeof dir, workdir, "subscriber");
    mcsync_subscriber *subscriber = open_subscriber(dir, pub, "alice", "alice-secret", 0, 0);
    mcsync_subscription *sub = NULL;
    CHECK(mcsync_subscriber_subscribe(subscriber, "watched", NULL, NULL, NULL, &sub));
    uint64_t v = 0;
    for (int i = 0; i < 30; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        CHECK(mcsync_db_put(db, (const uint8_t *)key, strlen(key), (const uint8_t *)"v", 1, &v));
    }
    CHECK(mcsync_subscription_wait_for_version(sub, v, 60000));

    char *text = NULL;
    size_t len = 0;
    CHECK(mcsync_publisher_metrics(pub, &text, &len));
    ASSERT(len == strlen(text));
    ASSERT(metric(text, "mcsync_publisher_updates_committed_total") == 30);
    ASSERT(metric(text, "mcsync_database_version{database=\"watched\"}") == 30);
    ASSERT(strcmp(text + len - 6, "# EOF\n") == 0);
    mcsync_bytes_free((uint8_t *)text);
    CHECK(mcsync_subscriber_metrics(subscriber, &text, NULL));
    ASSERT(metric(text, "mcsync_subscription_version{database=\"watched\"}") == 30);
    ASSERT(metric(text, "mcsync_subscription_latency_seconds_count{database=\"watched\"}") ==
           30);
    mcsync_bytes_free((uint8_t *)text);
    EXPECT(mcsync_publisher_metrics(pub, NULL, NULL), MCSYNC_ERR_NULL);
    EXPECT(mcsync_subscriber_metrics(NULL, &text, NULL), MCSYNC_ERR_NULL);

    /* Switched off: no record reaches the callback any more. */
    CHECK(mcsync_set_log_callback(NULL, NULL, MCSYNC_LOG_TRACE));
    pthread_mutex_lock(&sink.lock);
    int before = sink.records;
    pthread_mutex_unlock(&sink.lock);
    mcsync_subscription_free(sub);
    mcsync_subscriber_free(subscriber);
    mcsync_db_free(db);
    CHECK(mcsync_publisher_close(pub));
    mcsync_publisher_free(pub);
    pthread_mutex_lock(&sink.lock);
    ASSERT(sink.records == before);
    pthread_mutex_unlock(&sink.lock);
    printf("PASS observe: %d log records reached the callback; metrics of publisher and "
           "subscriber; %d expected error codes\n",
           before, g_expectations);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 5 && strcmp(argv[1], "converge") == 0 && argc == 6) {
        g_mode = "converge";
        return run_converge(argv[2], argv[3], atoi(argv[4]), strtoull(argv[5], NULL, 10));
    }
    if (argc == 5 && strcmp(argv[1], "twophase") == 0) {
        g_mode = "twophase";
        return run_twophase(argv[2], argv[3], atoi(argv[4]));
    }
    if (argc == 5 && strcmp(argv[1], "misuse") == 0) {
        g_mode = "misuse";
        return run_misuse(argv[2], argv[3], atoi(argv[4]));
    }
    if (argc == 5 && strcmp(argv[1], "users") == 0) {
        g_mode = "users";
        return run_users(argv[2], argv[3], atoi(argv[4]));
    }
    if (argc == 5 && strcmp(argv[1], "observe") == 0) {
        g_mode = "observe";
        return run_observe(argv[2], argv[3], atoi(argv[4]));
    }
    fprintf(stderr,
            "usage: %s converge WORKDIR GROUP PORT UPDATES\n"
            "       %s twophase WORKDIR GROUP PORT\n"
            "       %s misuse WORKDIR GROUP PORT\n"
            "       %s users WORKDIR GROUP PORT\n"
            "       %s observe WORKDIR GROUP PORT\n",
            argv[0], argv[0], argv[0], argv[0], argv[0]);
    return 2;
}
