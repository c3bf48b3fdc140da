/*
 * legacy_hook: replicating a legacy database from its update hook.
 *
 *   legacy_hook WORKDIR GROUP PORT
 *
 * "kv" below stands for an existing database server: an in-memory key-value table whose
 * write path ends in an update hook, the way SQLite's sqlite3_update_hook() or a storage
 * engine's post-commit trigger does. The only mcsync code is in the hook (and in opening
 * the publisher at startup): every committed write is handed to mcsync, which journals it
 * (asynchronously, so the hook does not wait for the disk) and multicasts it to the
 * replicas. A batch maps to one mcsync transaction, so replicas
 * see it atomically, as one version.
 *
 * To show the result, the same process also runs a subscriber and checks that its replica
 * matches the server's table. Prints "PASS legacy_hook ..." and exits 0 on success.
 */
#define _POSIX_C_SOURCE 200809L

#include "mcsync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ the legacy server */

#define KV_MAX 64

enum kv_op { KV_SET, KV_DEL, KV_BATCH_BEGIN, KV_BATCH_COMMIT };

/* The hook the server calls after each committed change; returns 0 or an error. */
typedef int (*kv_hook)(void *ctx, enum kv_op op, const char *key, const char *value);

struct kv_server {
    char keys[KV_MAX][32];
    char values[KV_MAX][64];
    int used[KV_MAX];
    kv_hook hook;
    void *hook_ctx;
};

static int kv_find(struct kv_server *s, const char *key)
{
    for (int i = 0; i < KV_MAX; i++)
        if (s->used[i] && strcmp(s->keys[i], key) == 0)
            return i;
    return -1;
}

static int kv_set(struct kv_server *s, const char *key, const char *value)
{
    int i = kv_find(s, key);
    for (int j = 0; i < 0 && j < KV_MAX; j++)
        if (!s->used[j])
            i = j;
    if (i < 0)
        return -1; /* table full */
    snprintf(s->keys[i], sizeof s->keys[i], "%s", key);
    snprintf(s->values[i], sizeof s->values[i], "%s", value);
    s->used[i] = 1;
    return s->hook ? s->hook(s->hook_ctx, KV_SET, key, value) : 0;
}

static int kv_del(struct kv_server *s, const char *key)
{
    int i = kv_find(s, key);
    if (i >= 0)
        s->used[i] = 0;
    return s->hook ? s->hook(s->hook_ctx, KV_DEL, key, NULL) : 0;
}

static int kv_batch(struct kv_server *s, enum kv_op op)
{
    return s->hook ? s->hook(s->hook_ctx, op, NULL, NULL) : 0;
}

/* ------------------------------------------------------------------ the mcsync hook */

struct replication {
    mcsync_db *db;
    mcsync_txn *batch; /* non-NULL between KV_BATCH_BEGIN and KV_BATCH_COMMIT */
    uint64_t version;  /* last version mcsync assigned */
};

static int report(const char *what, mcsync_status st)
{
    char msg[512];
    mcsync_last_error(msg, sizeof msg, NULL);
    fprintf(stderr, "legacy_hook: %s: %s (%s)\n", what, mcsync_status_str((int)st), msg);
    return -1;
}

/* The update hook: a thin translation of the server's change into mcsync calls. */
static int replicate(void *ctx, enum kv_op op, const char *key, const char *value)
{
    struct replication *r = ctx;
    const uint8_t *k = (const uint8_t *)key, *v = (const uint8_t *)value;
    mcsync_status st = MCSYNC_OK;
    switch (op) {
    case KV_SET:
        st = r->batch ? mcsync_txn_put(r->batch, k, strlen(key), v, strlen(value))
                      : mcsync_db_put(r->db, k, strlen(key), v, strlen(value), &r->version);
        break;
    case KV_DEL:
        st = r->batch ? mcsync_txn_delete(r->batch, k, strlen(key))
                      : mcsync_db_delete(r->db, k, strlen(key), &r->version);
        break;
    case KV_BATCH_BEGIN:
        st = mcsync_txn_begin(r->db, &r->batch);
        break;
    case KV_BATCH_COMMIT:
        st = mcsync_txn_commit(r->batch, &r->version); /* frees the txn, even on failure */
        r->batch = NULL;
        break;
    }
    return st == MCSYNC_OK ? 0 : report("replicating a write", st);
}

/* ------------------------------------------------------------------ demo and check */

#define CHECK(call)                                                                          \
    do {                                                                                     \
        mcsync_status st_ = (call);                                                          \
        if (st_ != MCSYNC_OK) {                                                              \
            report(#call, st_);                                                              \
            printf("FAIL legacy_hook: %s\n", #call);                                         \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s WORKDIR GROUP PORT\n", argv[0]);
        return 2;
    }
    char dir[4096];

    /* At server startup: open the publisher and the database to replicate. */
    mcsync_publisher_config *pc = NULL;
    mcsync_publisher *pub = NULL;
    snprintf(dir, sizeof dir, "%s/legacy-master", argv[1]);
    CHECK(mcsync_publisher_config_new(&pc));
    CHECK(mcsync_publisher_config_set_data_dir(pc, dir));
    CHECK(mcsync_publisher_config_set_open_access(pc)); /* a demo: anyone may subscribe */
    CHECK(mcsync_publisher_config_set_group(pc, argv[2]));
    CHECK(mcsync_publisher_config_set_port(pc, (uint16_t)atoi(argv[3])));
    CHECK(mcsync_publisher_config_set_interface(pc, "127.0.0.1"));
    /* The hook runs inside the server's write path: return as soon as the version is
     * assigned, and let mcsync's journal writer group-commit behind (a crash may lose the
     * last few updates; mcsync_publisher_flush waits for them). */
    CHECK(mcsync_publisher_config_set_async_commits(pc, true));
    CHECK(mcsync_publisher_open(pc, &pub));
    mcsync_publisher_config_free(pc);

    struct replication repl = {NULL, NULL, 0};
    CHECK(mcsync_publisher_database(pub, "legacy", &repl.db));
    struct kv_server server;
    memset(&server, 0, sizeof server);
    server.hook = replicate;
    server.hook_ctx = &repl;

    /* A replica, in this process for the demonstration. */
    char control[64], fingerprint[65];
    size_t len = 0;
    CHECK(mcsync_publisher_control_addr(pub, control, sizeof control, &len));
    CHECK(mcsync_publisher_fingerprint(pub, fingerprint, sizeof fingerprint, &len));
    mcsync_subscriber_config *sc = NULL;
    mcsync_subscriber *subscriber = NULL;
    mcsync_subscription *replica = NULL;
    snprintf(dir, sizeof dir, "%s/legacy-replica", argv[1]);
    CHECK(mcsync_subscriber_config_new(&sc));
    CHECK(mcsync_subscriber_config_set_data_dir(sc, dir));
    CHECK(mcsync_subscriber_config_set_server(sc, control));
    CHECK(mcsync_subscriber_config_set_trust_fingerprint(sc, fingerprint));
    CHECK(mcsync_subscriber_open(sc, &subscriber));
    mcsync_subscriber_config_free(sc);
    CHECK(mcsync_subscriber_subscribe(subscriber, "legacy", NULL, NULL, NULL, &replica));

    /* The server's ordinary work; replication happens inside the hook. */
    char k[32], v[64];
    for (int i = 0; i < 40; i++) {
        snprintf(k, sizeof k, "user:%d", i);
        snprintf(v, sizeof v, "{\"name\":\"user %d\",\"visits\":%d}", i, i * 3);
        if (kv_set(&server, k, v) != 0)
            return 1;
    }
    for (int i = 0; i < 40; i += 4) {
        snprintf(k, sizeof k, "user:%d", i);
        if (kv_del(&server, k) != 0)
            return 1;
    }
    if (kv_batch(&server, KV_BATCH_BEGIN) != 0 || kv_set(&server, "user:1", "{\"renamed\":1}") ||
        kv_set(&server, "counter", "41") || kv_del(&server, "user:2") ||
        kv_batch(&server, KV_BATCH_COMMIT) != 0)
        return 1;

    /* Everything the hook handed over is durable from here on. */
    CHECK(mcsync_publisher_flush(pub));

    /* The replica converges to the server's table, record for record. */
    CHECK(mcsync_subscription_wait_for_version(replica, repl.version, 60000));
    int records = 0;
    for (int i = 0; i < KV_MAX; i++) {
        if (!server.used[i])
            continue;
        uint8_t *value = NULL;
        size_t value_len = 0;
        CHECK(mcsync_subscription_get(replica, (const uint8_t *)server.keys[i],
                                      strlen(server.keys[i]), &value, &value_len));
        int same = value_len == strlen(server.values[i]) &&
                   memcmp(value, server.values[i], value_len) == 0;
        mcsync_bytes_free(value);
        if (!same) {
            printf("FAIL legacy_hook: replica differs at %s\n", server.keys[i]);
            return 1;
        }
        records++;
    }
    mcsync_subscription_iter *it = NULL;
    size_t replica_records = 0;
    CHECK(mcsync_subscription_iter_new(replica, &it));
    CHECK(mcsync_subscription_iter_count(it, &replica_records));
    mcsync_subscription_iter_free(it);
    uint8_t *gone = NULL;
    size_t gone_len = 0;
    if (replica_records != (size_t)records ||
        mcsync_subscription_get(replica, (const uint8_t *)"user:2", 6, &gone, &gone_len) !=
            MCSYNC_ERR_NOT_FOUND) {
        printf("FAIL legacy_hook: replica has %zu records, server %d\n", replica_records,
               records);
        return 1;
    }

    mcsync_subscription_free(replica);
    mcsync_subscriber_free(subscriber);
    mcsync_db_free(repl.db);
    mcsync_publisher_free(pub);
    printf("PASS legacy_hook: %d records replicated from the server's update hook, replica at "
           "version %llu\n",
           records, (unsigned long long)repl.version);
    return 0;
}
