/*
 * c_api.c - the C API against a real mechad, compiled with the system cc and
 * linked with the static libmecha.a (driven by tests/c_client.rs).
 *
 *   c_api SOCKET ABSENT_SOCKET
 *
 * SOCKET is a running mechad whose configuration (set up by c_client.rs) has
 * the default stores plus:
 *   - configuration item "greeting" = "hello, C" in the default config store;
 *   - secret "DB_PASSWORD" = "s3cr3t" in the default (environment) store;
 *   - multi-valued secret "db" = {password: pw-1, user: admin} in store "files";
 *   - output binding "localfiles" (bindings.localstorage over an empty directory)
 *     and input binding "ticks" (bindings.cron, "@every 1s").
 * ABSENT_SOCKET is a path where nothing listens.
 *
 * Prints one "ok N - ..." / "not ok N - ..." line per check (TAP style) and
 * "# all passed" at the end; exits 1 if any check failed.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mecha.h>

_Static_assert(sizeof(mecha_status) == sizeof(int), "mecha_status is returned as an int");

static int checks = 0;
static int failures = 0;

/* Records one check (evaluating `cond` once); on failure also prints the
 * library's last message. */
#define CHECK(cond, ...)                                                            \
    do {                                                                            \
        int passed_ = (cond);                                                       \
        ++checks;                                                                   \
        if (passed_) {                                                              \
            printf("ok %d - ", checks);                                             \
        } else {                                                                    \
            ++failures;                                                             \
            printf("not ok %d - (%s:%d: %s) ", checks, __FILE__, __LINE__, #cond);  \
        }                                                                           \
        printf(__VA_ARGS__);                                                        \
        if (!passed_)                                                               \
            printf(" [last error: %s]", mecha_last_error());                        \
        printf("\n");                                                               \
    } while (0)

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- state -------------------------------------------------------------- */

static void test_state(mecha_client *c) {
    const char *text = "three apples";
    char *etag = NULL;
    mecha_status st = mecha_state_set(c, NULL, "cart:1", (const uint8_t *)text, strlen(text),
                                      NULL, 0, &etag);
    CHECK(st == MECHA_OK && etag && *etag, "set returns OK and a new ETag");
    CHECK(strcmp(mecha_last_error(), "") == 0, "last error is empty after a success");

    uint8_t *value = NULL;
    size_t len = 99;
    char *got_etag = NULL;
    st = mecha_state_get(c, "", "cart:1", &value, &len, &got_etag);
    CHECK(st == MECHA_OK && len == strlen(text) && memcmp(value, text, len) == 0,
          "get returns the value just set");
    CHECK(st == MECHA_OK && value[len] == '\0', "values carry a NUL after their last byte");
    CHECK(st == MECHA_OK && strcmp(got_etag, etag) == 0, "get returns the ETag set returned");
    mecha_free(value);
    mecha_free(got_etag);

    /* Binary values keep their NUL bytes: the length is what counts. */
    const uint8_t bin[] = {0, 1, 2, 0, 255};
    st = mecha_state_set(c, NULL, "bin", bin, sizeof bin, NULL, 0, NULL);
    CHECK(st == MECHA_OK, "set of a binary value with new_etag = NULL");
    st = mecha_state_get(c, NULL, "bin", &value, &len, NULL);
    CHECK(st == MECHA_OK && len == sizeof bin && memcmp(value, bin, len) == 0,
          "binary value round trip (etag out = NULL)");
    mecha_free(value);

    /* An empty value, passed as NULL with length 0. */
    st = mecha_state_set(c, NULL, "empty", NULL, 0, NULL, 0, NULL);
    CHECK(st == MECHA_OK, "set of an empty value given as NULL, 0");
    st = mecha_state_get(c, NULL, "empty", &value, &len, NULL);
    CHECK(st == MECHA_OK && len == 0 && value && value[0] == '\0', "empty value round trip");
    mecha_free(value);

    /* A missing key: NOT_FOUND, outputs reset. */
    value = (uint8_t *)"garbage";
    len = 42;
    got_etag = (char *)"garbage";
    st = mecha_state_get(c, NULL, "no-such-key", &value, &len, &got_etag);
    CHECK(st == MECHA_NOT_FOUND, "get of a missing key is MECHA_NOT_FOUND (got %d)", st);
    CHECK(value == NULL && len == 0 && got_etag == NULL, "a failed call leaves NULL / 0 out");
    CHECK(strstr(mecha_last_error(), "no-such-key") != NULL, "the message names the key: %s",
          mecha_last_error());

    /* Conditional writes. */
    const char *v2 = "four apples";
    st = mecha_state_set(c, NULL, "cart:1", (const uint8_t *)v2, strlen(v2), "not-the-etag", 0,
                         NULL);
    CHECK(st == MECHA_ETAG_MISMATCH && st == 2, "set with a wrong ETag is MECHA_ETAG_MISMATCH (2)");
    char *etag2 = NULL;
    st = mecha_state_set(c, NULL, "cart:1", (const uint8_t *)v2, strlen(v2), etag, 0, &etag2);
    CHECK(st == MECHA_OK && etag2 && strcmp(etag2, etag) != 0,
          "set with the current ETag succeeds with a new ETag");
    st = mecha_state_set(c, NULL, "cart:1", (const uint8_t *)v2, strlen(v2), etag, 0, NULL);
    CHECK(st == MECHA_ETAG_MISMATCH, "the old ETag no longer matches");
    st = mecha_state_set(c, NULL, "never-written", (const uint8_t *)v2, strlen(v2), etag2, 0,
                         NULL);
    CHECK(st == MECHA_ETAG_MISMATCH, "a set with an ETag on a missing key is a mismatch");

    /* Deletes. */
    int existed = -1;
    st = mecha_state_delete(c, NULL, "cart:1", "not-the-etag", &existed);
    CHECK(st == MECHA_ETAG_MISMATCH && existed == 0, "delete with a wrong ETag is refused");
    st = mecha_state_delete(c, NULL, "cart:1", etag2, &existed);
    CHECK(st == MECHA_OK && existed == 1, "delete with the current ETag removes the key");
    st = mecha_state_delete(c, NULL, "cart:1", NULL, &existed);
    CHECK(st == MECHA_OK && existed == 0, "deleting a missing key is OK with existed = 0");
    st = mecha_state_get(c, NULL, "cart:1", &value, &len, NULL);
    CHECK(st == MECHA_NOT_FOUND, "the deleted key is gone");
    mecha_free(etag);
    mecha_free(etag2);

    /* TTL. */
    st = mecha_state_set(c, NULL, "short-lived", (const uint8_t *)"x", 1, NULL, 300, NULL);
    CHECK(st == MECHA_OK, "set with a TTL of 300 ms");
    st = mecha_state_get(c, NULL, "short-lived", &value, &len, NULL);
    CHECK(st == MECHA_OK, "the key is there before its TTL passes");
    mecha_free(value);
    sleep_ms(1000);
    st = mecha_state_get(c, NULL, "short-lived", &value, &len, NULL);
    CHECK(st == MECHA_NOT_FOUND, "the key is gone after its TTL (got %d)", st);

    /* The daemon's own refusals come through as its status. */
    st = mecha_state_set(c, NULL, "", (const uint8_t *)"x", 1, NULL, 0, NULL);
    CHECK(st == MECHA_INVALID_ARGUMENT, "an empty key is the daemon's INVALID_ARGUMENT");
    st = mecha_state_get(c, "no-such-store", "k", &value, &len, NULL);
    CHECK(st == MECHA_INVALID_ARGUMENT, "an unknown store is INVALID_ARGUMENT");
}

/* ---- lock --------------------------------------------------------------- */

static void test_lock(mecha_client *c) {
    uint64_t first = 0, second = 99;
    mecha_status st = mecha_lock_try(c, NULL, "invoice:7", "worker-a", 10000, 0, &first);
    CHECK(st == MECHA_OK && first > 0, "try lock grants a fencing token > 0 (%" PRIu64 ")", first);
    st = mecha_lock_try(c, NULL, "invoice:7", "worker-b", 10000, 0, &second);
    CHECK(st == MECHA_OK && second == 0, "a second try is refused: OK with token 0");
    st = mecha_lock_try(c, NULL, "invoice:7", "worker-a", 10000, 0, &second);
    CHECK(st == MECHA_OK && second == 0, "the holder itself is not granted twice");

    int result = -1;
    st = mecha_lock_unlock(c, NULL, "invoice:7", "worker-b", &result);
    CHECK(st == MECHA_OK && result == MECHA_UNLOCK_LOCK_BELONGS_TO_OTHERS,
          "unlock by another owner: LOCK_BELONGS_TO_OTHERS");
    st = mecha_lock_unlock(c, NULL, "invoice:7", "worker-a", &result);
    CHECK(st == MECHA_OK && result == MECHA_UNLOCK_SUCCESS, "unlock by the holder: SUCCESS");
    st = mecha_lock_unlock(c, NULL, "invoice:7", "worker-a", &result);
    CHECK(st == MECHA_OK && result == MECHA_UNLOCK_LOCK_DOES_NOT_EXIST,
          "unlock of a free lock: LOCK_DOES_NOT_EXIST");

    st = mecha_lock_try(c, NULL, "invoice:7", "worker-b", 150, 0, &second);
    CHECK(st == MECHA_OK && second > first, "the next grant has a larger token (%" PRIu64 ")",
          second);
    uint64_t waited = 0;
    st = mecha_lock_try(c, NULL, "invoice:7", "worker-c", 10000, 5000, &waited);
    CHECK(st == MECHA_OK && waited > second, "a waiting try gets the lock when the lease ends");

    st = mecha_lock_try(c, NULL, "invoice:8", "worker-a", 0, 0, &first);
    CHECK(st == MECHA_INVALID_ARGUMENT && first == 0, "a zero TTL is INVALID_ARGUMENT");
}

/* ---- sequencer ---------------------------------------------------------- */

static void test_sequencer(mecha_client *c) {
    uint64_t prev = 0;
    int increasing = 1;
    for (int i = 0; i < 10; i++) {
        uint64_t id = 0;
        if (mecha_next_id(c, NULL, "orders", &id) != MECHA_OK || id <= prev)
            increasing = 0;
        prev = id;
    }
    CHECK(increasing && prev >= 10, "ten next ids strictly increase (last %" PRIu64 ")", prev);
}

/* Several threads share one client. */
enum { THREADS = 4, PER_THREAD = 50 };
struct worker {
    mecha_client *client;
    uint64_t ids[PER_THREAD];
    int ok;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    w->ok = 1;
    for (int i = 0; i < PER_THREAD; i++) {
        if (mecha_next_id(w->client, NULL, "shared", &w->ids[i]) != MECHA_OK ||
            (i > 0 && w->ids[i] <= w->ids[i - 1]))
            w->ok = 0;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void test_threads(mecha_client *c) {
    struct worker workers[THREADS];
    pthread_t threads[THREADS];
    int started = 1;
    for (int i = 0; i < THREADS; i++) {
        workers[i].client = c;
        if (pthread_create(&threads[i], NULL, worker_main, &workers[i]) != 0)
            started = 0;
    }
    CHECK(started, "%d threads started", THREADS);
    uint64_t all[THREADS * PER_THREAD];
    int ok = started;
    for (int i = 0; i < THREADS && started; i++) {
        pthread_join(threads[i], NULL);
        ok = ok && workers[i].ok;
        memcpy(&all[i * PER_THREAD], workers[i].ids, sizeof workers[i].ids);
    }
    CHECK(ok, "every thread's ids increase on the shared client");
    qsort(all, THREADS * PER_THREAD, sizeof all[0], cmp_u64);
    int distinct = 1;
    for (int i = 1; i < THREADS * PER_THREAD; i++)
        if (all[i] == all[i - 1])
            distinct = 0;
    CHECK(ok && distinct, "no id was handed out twice across threads");
}

/* ---- pub/sub -------------------------------------------------------------- */

static void test_pubsub(mecha_client *c) {
    mecha_subscription *billing = NULL, *audit = NULL;
    mecha_status st = mecha_subscribe(c, NULL, "orders", "billing", &billing);
    CHECK(st == MECHA_OK && billing != NULL, "subscribe to orders as billing");
    st = mecha_subscribe(c, NULL, "orders", "audit", &audit);
    CHECK(st == MECHA_OK && audit != NULL, "subscribe to orders as audit");

    mecha_message *m = NULL;
    st = mecha_subscription_next(billing, 0, &m);
    CHECK(st == MECHA_OK && m == NULL, "nothing published yet: NULL message, MECHA_OK");

    const uint8_t order[] = "{\"id\":7}";
    st = mecha_publish(c, NULL, "orders", order, sizeof order - 1, "application/json");
    CHECK(st == MECHA_OK, "publish");

    st = mecha_subscription_next(billing, 5000, &m);
    CHECK(st == MECHA_OK && m != NULL, "billing receives the message");
    if (m) {
        size_t len = 0;
        const uint8_t *data = mecha_message_data(m, &len);
        CHECK(len == sizeof order - 1 && memcmp(data, order, len) == 0, "the data round-trips");
        CHECK(strcmp(mecha_message_topic(m), "orders") == 0, "the topic");
        CHECK(strcmp(mecha_message_content_type(m), "application/json") == 0, "the content type");
        CHECK(*mecha_message_id(m) != '\0', "a CloudEvents id");
        CHECK(mecha_message_attempt(m) == 1, "first attempt");
        /* Rejected: it comes again, as attempt 2. */
        CHECK(mecha_message_nack(billing, m) == MECHA_OK, "nack");
        mecha_message_free(m);
        m = NULL;
    }
    st = mecha_subscription_next(billing, 5000, &m);
    CHECK(st == MECHA_OK && m && mecha_message_attempt(m) == 2, "a nacked message is redelivered");
    if (m) {
        CHECK(mecha_message_ack(billing, m) == MECHA_OK, "ack");
        mecha_message_free(m);
        m = NULL;
    }

    /* Fan-out: the other group gets its own copy. */
    st = mecha_subscription_next(audit, 5000, &m);
    CHECK(st == MECHA_OK && m && mecha_message_attempt(m) == 1, "audit gets its own copy");
    if (m) {
        CHECK(mecha_message_ack(audit, m) == MECHA_OK, "audit acks");
        mecha_message_free(m);
        m = NULL;
    }
    st = mecha_subscription_next(billing, 200, &m);
    CHECK(st == MECHA_OK && m == NULL, "an acked message is not delivered again");

    st = mecha_subscription_next(NULL, 0, &m);
    CHECK(st == MECHA_ERR_INVALID, "NULL subscription: MECHA_ERR_INVALID");
    mecha_subscription_close(audit);
    mecha_subscription_close(billing);
    mecha_subscription_close(NULL);
    mecha_message_free(NULL);
}

/* ---- bindings --------------------------------------------------------------- */

/* "localfiles" is a bindings.localstorage output binding over an empty directory;
 * "ticks" a bindings.cron input binding ticking every second. */
static void test_bindings(mecha_client *c) {
    const char *create_meta[] = {"fileName", "c-test.txt"};
    const uint8_t body[] = "hello from C";
    uint8_t *resp = NULL;
    size_t resp_len = 0, meta_count = 0;
    char **meta = NULL;
    mecha_status st = mecha_binding_invoke(c, "localfiles", "create", body, sizeof body - 1, create_meta, 1,
                                           &resp, &resp_len, &meta, &meta_count);
    CHECK(st == MECHA_OK && resp != NULL && resp_len == 0, "localstorage create: empty result body");
    CHECK(meta != NULL && meta_count == 1 && strcmp(meta[0], "fileName") == 0 &&
              strcmp(meta[1], "c-test.txt") == 0 && meta[2] == NULL,
          "create answers the fileName as metadata, NULL-terminated");
    mecha_free(resp);
    mecha_free(meta);

    st = mecha_binding_invoke(c, "localfiles", "get", NULL, 0, create_meta, 1, &resp, &resp_len, NULL, NULL);
    CHECK(st == MECHA_OK && resp_len == sizeof body - 1 && memcmp(resp, body, resp_len) == 0 &&
              resp[resp_len] == '\0',
          "get returns the file's contents, NUL-terminated");
    mecha_free(resp);

    st = mecha_binding_invoke(c, "localfiles", "list", NULL, 0, NULL, 0, &resp, &resp_len, NULL, &meta_count);
    CHECK(st == MECHA_OK && resp && strstr((const char *)resp, "\"c-test.txt\"") != NULL,
          "list names the file: %s", resp ? (const char *)resp : "(null)");
    mecha_free(resp);

    st = mecha_binding_invoke(c, "localfiles", "delete", NULL, 0, create_meta, 1, &resp, &resp_len, NULL, NULL);
    CHECK(st == MECHA_OK, "delete");
    mecha_free(resp);
    resp = (uint8_t *)&resp; /* garbage that must be reset */
    st = mecha_binding_invoke(c, "localfiles", "get", NULL, 0, create_meta, 1, &resp, &resp_len, NULL, NULL);
    CHECK(st == MECHA_NOT_FOUND && resp == NULL && resp_len == 0,
          "a deleted file: MECHA_NOT_FOUND, nothing handed out");
    st = mecha_binding_invoke(c, "no-such-binding", "get", NULL, 0, NULL, 0, &resp, &resp_len, NULL, NULL);
    CHECK(st == MECHA_NOT_FOUND, "an unknown binding: MECHA_NOT_FOUND");
    st = mecha_binding_invoke(c, NULL, "get", NULL, 0, NULL, 0, &resp, &resp_len, NULL, NULL);
    CHECK(st == MECHA_ERR_INVALID, "NULL name: MECHA_ERR_INVALID");
    st = mecha_binding_invoke(c, "localfiles", "get", NULL, 0, NULL, 1, &resp, &resp_len, NULL, NULL);
    CHECK(st == MECHA_ERR_INVALID, "NULL metadata with a count: MECHA_ERR_INVALID");

    mecha_binding_subscription *ticks = NULL;
    st = mecha_binding_subscribe(c, "ticks", &ticks);
    CHECK(st == MECHA_OK && ticks != NULL, "subscribe to the cron binding");
    mecha_binding_event *e = NULL;
    /* The first tick comes within a second; the wait only bounds a failure. */
    st = mecha_binding_subscription_next(ticks, 15000, &e);
    CHECK(st == MECHA_OK && e != NULL, "a tick arrives");
    if (e) {
        size_t len = 1;
        mecha_binding_event_data(e, &len);
        CHECK(len == 0, "a tick has no data");
        CHECK(strcmp(mecha_binding_event_name(e), "ticks") == 0, "the event names its binding");
        CHECK(mecha_binding_event_offset(e) >= 1 && mecha_binding_event_attempt(e) == 1,
              "offset %" PRIu64 ", attempt %u", mecha_binding_event_offset(e), mecha_binding_event_attempt(e));
        const char *time = mecha_binding_event_metadata(e, "time");
        CHECK(time != NULL && strlen(time) >= 20 && time[4] == '-', "a time entry: %s", time ? time : "(null)");
        CHECK(mecha_binding_event_metadata(e, "no-such-entry") == NULL, "an absent entry is NULL");
        const char *name = NULL, *value = NULL;
        size_t n = mecha_binding_event_metadata_count(e);
        int found = 0;
        for (size_t i = 0; i < n; i++) {
            mecha_binding_event_metadata_at(e, i, &name, &value);
            found |= name && value && strcmp(name, "time") == 0 && strcmp(value, time) == 0;
        }
        CHECK(found, "the entries include time");
        mecha_binding_event_metadata_at(e, n, &name, &value);
        CHECK(name == NULL && value == NULL, "an entry past the end is NULL");
        CHECK(mecha_binding_event_ack(ticks, e) == MECHA_OK, "ack the tick");
        mecha_binding_event_free(e);
    }
    st = mecha_binding_subscription_next(NULL, 0, &e);
    CHECK(st == MECHA_ERR_INVALID && e == NULL, "NULL subscription: MECHA_ERR_INVALID");
    mecha_binding_subscription_close(ticks);
    mecha_binding_subscription_close(NULL);
    mecha_binding_event_free(NULL);
}

/* ---- invoke ---------------------------------------------------------------- */

/* The callee: serves "echo-c" on its own client, answering `calls` calls
 * ("echo" returns the data, anything else is INVALID_ARGUMENT). */
struct callee {
    mecha_registration *reg;
    int calls;
    int served;
};

static void *callee_main(void *arg) {
    struct callee *ce = arg;
    for (int waited = 0; ce->served < ce->calls && waited < 100; ++waited) {
        mecha_call *call = NULL;
        if (mecha_registration_next(ce->reg, 100, &call) != MECHA_OK || call == NULL)
            continue;
        size_t len = 0;
        const uint8_t *data = mecha_call_data(call, &len);
        if (strcmp(mecha_call_method(call), "echo") == 0) {
            mecha_call_reply(ce->reg, call, MECHA_OK, data, len, mecha_call_content_type(call));
        } else {
            const char msg[] = "no such method";
            mecha_call_reply(ce->reg, call, MECHA_INVALID_ARGUMENT, (const uint8_t *)msg,
                             sizeof msg - 1, NULL);
        }
        mecha_call_free(call);
        ++ce->served;
    }
    return NULL;
}

static void test_invoke(const char *socket, mecha_client *caller) {
    mecha_client *server = NULL;
    mecha_status st = mecha_connect(socket, &server);
    CHECK(st == MECHA_OK, "a second client for the callee");
    if (st != MECHA_OK)
        return;
    struct callee ce = {NULL, 2, 0};
    st = mecha_register(server, "echo-c", &ce.reg);
    CHECK(st == MECHA_OK && ce.reg != NULL, "register echo-c");
    if (st != MECHA_OK) {
        mecha_close(server);
        return;
    }
    mecha_call *none = NULL;
    st = mecha_registration_next(ce.reg, 0, &none);
    CHECK(st == MECHA_OK && none == NULL, "no call yet: NULL call, MECHA_OK");

    pthread_t thread;
    int started = pthread_create(&thread, NULL, callee_main, &ce) == 0;
    CHECK(started, "start the callee thread");
    if (started) {
        const uint8_t body[] = "{\"n\":1}";
        uint8_t *resp = NULL;
        size_t resp_len = 0;
        st = mecha_invoke(caller, "echo-c", "echo", body, sizeof body - 1, "application/json",
                          &resp, &resp_len);
        CHECK(st == MECHA_OK && resp_len == sizeof body - 1 && memcmp(resp, body, resp_len) == 0,
              "invoke echo-c: the callee echoes the data");
        mecha_free(resp);
        resp = NULL;
        st = mecha_invoke(caller, "echo-c", "nope", NULL, 0, NULL, &resp, &resp_len);
        CHECK(st == MECHA_INVALID_ARGUMENT && resp == NULL && resp_len == 0 &&
                  strstr(mecha_last_error(), "no such method") != NULL,
              "the callee's error status and message reach the caller");
        pthread_join(thread, NULL);
        CHECK(ce.served == 2, "the callee served both calls");
    }

    uint8_t *resp = NULL;
    size_t resp_len = 0;
    st = mecha_invoke(caller, "no-such-app", "echo", NULL, 0, NULL, &resp, &resp_len);
    CHECK(st == MECHA_NOT_FOUND && resp == NULL, "an unknown app: MECHA_NOT_FOUND");
    st = mecha_invoke(caller, "echo-c", "echo", NULL, 0, NULL, NULL, &resp_len);
    CHECK(st == MECHA_ERR_INVALID, "NULL response: MECHA_ERR_INVALID");
    st = mecha_registration_next(NULL, 0, &none);
    CHECK(st == MECHA_ERR_INVALID, "NULL registration: MECHA_ERR_INVALID");

    mecha_registration_close(ce.reg);
    mecha_registration_close(NULL);
    mecha_call_free(NULL);
    /* Closed: nobody serves echo-c any more. */
    st = mecha_invoke(caller, "echo-c", "echo", NULL, 0, NULL, &resp, &resp_len);
    CHECK(st == MECHA_NOT_FOUND, "after close, echo-c is not found");
    mecha_close(server);
}

/* ---- secrets and configuration ------------------------------------------ */

static void test_secrets(mecha_client *c) {
    char *value = NULL;
    mecha_status st = mecha_secret_get(c, NULL, "DB_PASSWORD", &value);
    CHECK(st == MECHA_OK && strcmp(value, "s3cr3t") == 0, "single-value secret from the default store");
    mecha_free(value);
    st = mecha_secret_get(c, NULL, "NO_SUCH_SECRET", &value);
    CHECK(st == MECHA_NOT_FOUND && value == NULL, "a missing secret is MECHA_NOT_FOUND");

    char **pairs = NULL;
    size_t count = 0;
    st = mecha_secret_get_all(c, "files", "db", &pairs, &count);
    CHECK(st == MECHA_OK && count == 2, "multi-valued secret: 2 pairs");
    if (st == MECHA_OK && count == 2) {
        CHECK(strcmp(pairs[0], "password") == 0 && strcmp(pairs[1], "pw-1") == 0 &&
                  strcmp(pairs[2], "user") == 0 && strcmp(pairs[3], "admin") == 0 &&
                  pairs[4] == NULL,
              "pairs are key, value, ... sorted by key, NULL-terminated");
    }
    mecha_free(pairs); /* one free for the whole array and its strings */
    st = mecha_secret_get_all(c, NULL, "DB_PASSWORD", &pairs, &count);
    CHECK(st == MECHA_OK && count == 1 && strcmp(pairs[0], "DB_PASSWORD") == 0 &&
              strcmp(pairs[1], "s3cr3t") == 0,
          "a single-value secret is one (name, value) pair");
    mecha_free(pairs);
    st = mecha_secret_get(c, "files", "db", &value);
    CHECK(st == MECHA_ERR_INVALID && strstr(mecha_last_error(), "mecha_secret_get_all"),
          "one value of a multi-valued secret is refused, pointing to get_all");
}

static void test_config(mecha_client *c) {
    char *value = NULL, *version = NULL;
    mecha_status st = mecha_config_get(c, NULL, "greeting", &value, &version);
    CHECK(st == MECHA_OK && strcmp(value, "hello, C") == 0 && version && *version,
          "configuration item with its version");
    mecha_free(value);
    mecha_free(version);
    st = mecha_config_get(c, NULL, "no-such-item", &value, NULL);
    CHECK(st == MECHA_NOT_FOUND && value == NULL, "a missing item is MECHA_NOT_FOUND");
}

/* ---- arguments, names, connections -------------------------------------- */

static void test_arguments(mecha_client *c) {
    uint8_t *value = NULL;
    size_t len = 0;
    mecha_status st = mecha_state_get(c, NULL, NULL, &value, &len, NULL);
    CHECK(st == MECHA_ERR_INVALID && strstr(mecha_last_error(), "key"), "NULL key: MECHA_ERR_INVALID");
    st = mecha_state_get(NULL, NULL, "k", &value, &len, NULL);
    CHECK(st == MECHA_ERR_INVALID, "NULL client: MECHA_ERR_INVALID");
    st = mecha_state_get(c, NULL, "k", NULL, &len, NULL);
    CHECK(st == MECHA_ERR_INVALID, "NULL required out parameter: MECHA_ERR_INVALID");
    st = mecha_state_get(c, NULL, "\xff\xfe", &value, &len, NULL);
    CHECK(st == MECHA_ERR_INVALID && strstr(mecha_last_error(), "UTF-8"), "invalid UTF-8: MECHA_ERR_INVALID");
    st = mecha_state_set(c, NULL, "k", NULL, 3, NULL, 0, NULL);
    CHECK(st == MECHA_ERR_INVALID, "NULL value with a length: MECHA_ERR_INVALID");
    st = mecha_set_timeout(NULL, 100);
    CHECK(st == MECHA_ERR_INVALID, "mecha_set_timeout(NULL): MECHA_ERR_INVALID");
    st = mecha_set_timeout(c, 3000);
    CHECK(st == MECHA_OK, "mecha_set_timeout");
    CHECK(strcmp(mecha_status_name(MECHA_ETAG_MISMATCH), "ETAG_MISMATCH") == 0 &&
              strcmp(mecha_status_name(MECHA_ERR_CONNECT), "ERR_CONNECT") == 0 &&
              strcmp(mecha_status_name(12345), "UNKNOWN") == 0,
          "status names");
    mecha_free(NULL);
    mecha_close(NULL);
    CHECK(1, "mecha_free(NULL) and mecha_close(NULL) do nothing");
}

static void test_connections(const char *socket, const char *absent) {
    mecha_client *c = (mecha_client *)&c; /* garbage that must be reset */
    mecha_status st = mecha_connect(absent, &c);
    CHECK(st == MECHA_ERR_CONNECT && c == NULL, "no daemon: MECHA_ERR_CONNECT and a NULL client");
    const char *msg = mecha_last_error();
    CHECK(strstr(msg, absent) != NULL && strstr(msg, "is mechad running?") != NULL,
          "the message names the socket: %s", msg);
    st = mecha_connect(absent, NULL);
    CHECK(st == MECHA_ERR_INVALID, "NULL out: MECHA_ERR_INVALID");

    /* NULL selects the default rule, which starts with $MECHA_SOCKET. */
    setenv("MECHA_SOCKET", socket, 1);
    st = mecha_connect(NULL, &c);
    uint64_t id = 0;
    CHECK(st == MECHA_OK && mecha_next_id(c, NULL, "via-env", &id) == MECHA_OK && id == 1,
          "mecha_connect(NULL) follows $MECHA_SOCKET");
    mecha_close(c);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET ABSENT_SOCKET\n", argv[0]);
        return 2;
    }
    mecha_client *c = NULL;
    mecha_status st = mecha_connect(argv[1], &c);
    CHECK(st == MECHA_OK && c != NULL, "connect to %s", argv[1]);
    if (st != MECHA_OK)
        return 1;
    test_state(c);
    test_lock(c);
    test_sequencer(c);
    test_pubsub(c);
    test_threads(c);
    test_invoke(argv[1], c);
    test_secrets(c);
    test_config(c);
    test_bindings(c);
    test_arguments(c);
    mecha_close(c);
    test_connections(argv[1], argv[2]);

    if (failures) {
        printf("# %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("# all passed (%d checks)\n", checks);
    return 0;
}
