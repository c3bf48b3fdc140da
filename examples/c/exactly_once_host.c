/*
 * exactly_once_host: a subscriber whose host keeps its own copy of a database in SQLite and
 * gets every update exactly once, across crashes, kill -9 and restarts.
 *
 *   exactly_once_host DATA_DIR SQLITE_FILE CONTROL_ADDR FINGERPRINT DATABASE [WAIT_VERSION]
 *
 * The host's SQLite file holds
 *
 *   rows(k BLOB PRIMARY KEY, v BLOB)    the host's copy of the records
 *   meta(version INTEGER)               the version of the last update applied (one row)
 *   seen(version INTEGER PRIMARY KEY)   every version applied (to prove exactly once)
 *
 * The update callback applies each update, its version and its `seen` row in ONE SQLite
 * transaction; a reset (`u->reset`) deletes every row first, in the same transaction. At
 * start the host reads its version from SQLite and subscribes with
 * mcsync_subscriber_subscribe_after, so mcsync hands it exactly the updates after it: an
 * update delivered twice would break the primary key of `seen`, which this host treats as
 * fatal (it prints why and exits with status 3). Kill it at any moment and start it again:
 * the table stays consistent and nothing is missed or repeated.
 *
 * Subscribes to DATABASE at the publisher's CONTROL_ADDR, trusting only the TLS certificate
 * with FINGERPRINT (both printed by publisher), as user "demo" with the secret in the
 * environment variable MCSYNC_DEMO_SECRET (default "demo-secret"), keeping its replica in
 * DATA_DIR. Without WAIT_VERSION it runs until SIGINT or SIGTERM; with it, it waits (up to 4
 * minutes) until its table holds that version, or until one of those signals. Either way it
 * then prints
 *
 *   version=V records=N digest=XXXXXXXXXXXXXXXX
 *   seen=C first=F last=L resets=R
 *
 * (the digest of its SQLite table in key order, as publisher prints it for its contents;
 * how many versions `seen` holds, the lowest and highest; how many resets it applied) and
 * exits 0. Example:
 *
 *   ./exactly_once_host /tmp/replica /tmp/host.sqlite 127.0.0.1:40211 <fingerprint> demo 1001
 */
#define _POSIX_C_SOURCE 200809L

#include "mcsync.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* SIGINT and SIGTERM are blocked in every thread (mcsync's threads inherit the mask of the
 * thread that starts them, so they are blocked before any starts) and taken with
 * sigtimedwait: a signal never interrupts a call inside mcsync or SQLite. */
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
    fprintf(stderr, "exactly_once_host: %s: %s (%s)\n", what, mcsync_status_str((int)st), msg);
    exit(1);
}

/* The host's store. Touched by the callback (on the subscription's process thread) while
 * subscribed, by main before subscribing and after the subscription is closed. */
struct host {
    sqlite3 *db;
    sqlite3_stmt *begin, *commit, *put, *del, *clear, *set_version, *see, *see_again, *reset;
    uint64_t version; /* what meta holds (mirrored here for the checks) */
};

/* A SQLite failure inside the callback: the host cannot go on without breaking its own
 * consistency, so it stops at once (no destructors: mcsync's threads are still running).
 * Its last committed transaction stays; the next start continues from there. */
static void fatal_sql(struct host *h, int rc, const char *what, uint64_t version)
{
    fprintf(stderr, "exactly_once_host: FATAL at version %llu: %s: %s (%s)\n",
            (unsigned long long)version, what, sqlite3_errstr(rc), sqlite3_errmsg(h->db));
    _exit(3);
}

static void step(struct host *h, sqlite3_stmt *st, const char *what, uint64_t version)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        if (rc == SQLITE_CONSTRAINT && st == h->see)
            fprintf(stderr, "exactly_once_host: version %llu delivered twice\n",
                    (unsigned long long)version);
        fatal_sql(h, rc, what, version);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static void bind_blob(struct host *h, sqlite3_stmt *st, int i, const void *p, size_t n,
                      uint64_t version)
{
    /* A zero-length value is bound as an empty blob, not NULL. */
    int rc = sqlite3_bind_blob(st, i, n ? p : "", (int)n, SQLITE_TRANSIENT);
    if (rc != SQLITE_OK)
        fatal_sql(h, rc, "bind", version);
}

/* The update callback: one SQLite transaction per update, holding its data, its version and
 * its `seen` row, so the host's table and version never disagree, whenever it is killed. */
static void on_update(void *user_data, const mcsync_update *u)
{
    struct host *h = user_data;
    uint64_t v = u->version;
    if (!u->reset && v <= h->version) {
        fprintf(stderr, "exactly_once_host: FATAL: version %llu after %llu (out of order or "
                "repeated)\n", (unsigned long long)v, (unsigned long long)h->version);
        _exit(3);
    }
    step(h, h->begin, "begin", v);
    if (u->reset)
        step(h, h->clear, "drop the table for a reset", v);
    for (size_t i = 0; i < u->ops_len; i++) {
        const mcsync_op *op = &u->ops[i];
        if (op->kind == MCSYNC_OP_PUT) {
            bind_blob(h, h->put, 1, op->key, op->key_len, v);
            bind_blob(h, h->put, 2, op->value, op->value_len, v);
            step(h, h->put, "put", v);
        } else {
            bind_blob(h, h->del, 1, op->key, op->key_len, v);
            step(h, h->del, "delete", v);
        }
    }
    sqlite3_bind_int64(h->set_version, 1, (sqlite3_int64)v);
    step(h, h->set_version, "store the version", v);
    if (u->reset) {
        /* A reset may restate a version the host saw (a history change): not a repeat. */
        step(h, h->reset, "count the reset", v);
        sqlite3_bind_int64(h->see_again, 1, (sqlite3_int64)v);
        step(h, h->see_again, "record the version", v);
    } else {
        sqlite3_bind_int64(h->see, 1, (sqlite3_int64)v);
        step(h, h->see, "record the version", v);
    }
    step(h, h->commit, "commit", v);
    h->version = v;
}

static void exec_sql(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "exactly_once_host: %s: %s\n", sql, err ? err : "?");
        exit(1);
    }
}

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "exactly_once_host: %s: %s\n", sql, sqlite3_errmsg(db));
        exit(1);
    }
    return st;
}

static uint64_t query_u64(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = prepare(db, sql);
    uint64_t n = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void open_host(struct host *h, const char *path)
{
    if (sqlite3_open(path, &h->db) != SQLITE_OK) {
        fprintf(stderr, "exactly_once_host: opening %s: %s\n", path, sqlite3_errmsg(h->db));
        exit(1);
    }
    /* WAL with synchronous=NORMAL: a committed transaction survives the process being
     * killed (power loss may lose the last ones, and mcsync then delivers them again, since
     * the version went with them). */
    exec_sql(h->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                    "CREATE TABLE IF NOT EXISTS rows(k BLOB PRIMARY KEY, v BLOB);"
                    "CREATE TABLE IF NOT EXISTS meta(version INTEGER, resets INTEGER);"
                    "CREATE TABLE IF NOT EXISTS seen(version INTEGER PRIMARY KEY);"
                    "INSERT INTO meta SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM meta);");
    h->version = query_u64(h->db, "SELECT version FROM meta");
    h->begin = prepare(h->db, "BEGIN IMMEDIATE");
    h->commit = prepare(h->db, "COMMIT");
    h->put = prepare(h->db, "INSERT OR REPLACE INTO rows(k, v) VALUES (?1, ?2)");
    h->del = prepare(h->db, "DELETE FROM rows WHERE k = ?1");
    h->clear = prepare(h->db, "DELETE FROM rows");
    h->set_version = prepare(h->db, "UPDATE meta SET version = ?1");
    h->see = prepare(h->db, "INSERT INTO seen(version) VALUES (?1)");
    h->see_again = prepare(h->db, "INSERT OR REPLACE INTO seen(version) VALUES (?1)");
    h->reset = prepare(h->db, "UPDATE meta SET resets = resets + 1");
}

static void close_host(struct host *h)
{
    sqlite3_stmt *all[] = {h->begin, h->commit, h->put, h->del, h->clear,
                           h->set_version, h->see, h->see_again, h->reset};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sqlite3_finalize(all[i]);
    sqlite3_close(h->db);
}

/* FNV-1a over "key\0value\0" of each record in key order, as publisher.c computes it. */
static uint64_t digest_add(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return (h ^ 0) * 0x100000001b3ULL;
}

static void report(struct host *h)
{
    /* SQLite orders BLOBs by memcmp, then length: the replica's key order. */
    sqlite3_stmt *st = prepare(h->db, "SELECT k, v FROM rows ORDER BY k");
    uint64_t d = 0xcbf29ce484222325ULL;
    size_t records = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        d = digest_add(d, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        d = digest_add(d, sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1));
        records++;
    }
    sqlite3_finalize(st);
    printf("version=%llu records=%zu digest=%016llx\n",
           (unsigned long long)query_u64(h->db, "SELECT version FROM meta"), records,
           (unsigned long long)d);
    printf("seen=%llu first=%llu last=%llu resets=%llu\n",
           (unsigned long long)query_u64(h->db, "SELECT count(*) FROM seen"),
           (unsigned long long)query_u64(h->db, "SELECT coalesce(min(version), 0) FROM seen"),
           (unsigned long long)query_u64(h->db, "SELECT coalesce(max(version), 0) FROM seen"),
           (unsigned long long)query_u64(h->db, "SELECT resets FROM meta"));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    block_stop_signals();
    if (argc < 6 || argc > 7) {
        fprintf(stderr,
                "usage: %s DATA_DIR SQLITE_FILE CONTROL_ADDR FINGERPRINT DATABASE "
                "[WAIT_VERSION]\n",
                argv[0]);
        return 2;
    }
    unsigned long long wait_version = argc > 6 ? strtoull(argv[6], NULL, 10) : 0;

    struct host host = {0};
    open_host(&host, argv[2]);
    fprintf(stderr, "exactly_once_host: pid %ld, host at version %llu\n", (long)getpid(),
            (unsigned long long)host.version);

    mcsync_subscriber_config *cfg = NULL;
    check(mcsync_subscriber_config_new(&cfg), "config");
    check(mcsync_subscriber_config_set_data_dir(cfg, argv[1]), "data dir");
    check(mcsync_subscriber_config_set_server(cfg, argv[3]), "server");
    check(mcsync_subscriber_config_set_trust_fingerprint(cfg, argv[4]), "fingerprint");
    const char *secret = getenv("MCSYNC_DEMO_SECRET");
    check(mcsync_subscriber_config_set_credentials(cfg, "demo", secret ? secret : "demo-secret"),
          "credentials");
    check(mcsync_subscriber_config_set_interface(cfg, "127.0.0.1"), "interface");
    /* This host wants to see every version (its `seen` table proves none is repeated or
     * missed), so a replica far behind catches up update by update, never compacted. */
    check(mcsync_subscriber_config_set_compact_catch_up_after(cfg, UINT64_MAX), "compaction");

    mcsync_subscriber *subscriber = NULL;
    check(mcsync_subscriber_open(cfg, &subscriber), "opening the subscriber");
    mcsync_subscriber_config_free(cfg);

    /* Exactly the updates after the version the host's own store holds. No free_user_data:
     * `host` lives on this stack until after the subscription is closed. */
    mcsync_subscription *sub = NULL;
    check(mcsync_subscriber_subscribe_after(subscriber, argv[5], host.version, on_update, &host,
                                            NULL, &sub),
          "subscribing");
    /* Each wait lasts up to 4 minutes, in slices, so that a signal ends it. */
    uint64_t caught_up = 0;
    mcsync_status st = MCSYNC_ERR_TIMEOUT;
    for (int slice = 0; slice < 2400 && st == MCSYNC_ERR_TIMEOUT && !stop_requested(0); slice++)
        st = mcsync_subscription_wait_caught_up(sub, 100, &caught_up);
    if (!stop) {
        check(st, "catching up");
        fprintf(stderr,
                "exactly_once_host: caught up with the publisher's version %llu at start\n",
                (unsigned long long)caught_up);
    }

    if (wait_version == 0) {
        while (!stop_requested(1000))
            ; /* the callback applies every update */
    } else {
        st = MCSYNC_ERR_TIMEOUT;
        for (int slice = 0; slice < 2400 && st == MCSYNC_ERR_TIMEOUT && !stop_requested(0);
             slice++)
            st = mcsync_subscription_wait_for_version(sub, wait_version, 100);
        if (!stop)
            check(st, "waiting");
    }
    if (stop)
        fprintf(stderr, "exactly_once_host: interrupted\n");

    /* After close no callback runs: `host` is main's alone again. */
    check(mcsync_subscription_close(sub), "close");
    mcsync_subscription_free(sub);
    mcsync_subscriber_free(subscriber);

    report(&host);
    close_host(&host);
    return 0;
}
