/*
 * mecha.h - the C client library of mecha (libmecha).
 *
 * One header, one library: link with `pkg-config --cflags --libs mecha`
 * (shared) or `pkg-config --static --cflags --libs mecha` (static). The
 * library talks to the node daemon `mechad` over its Unix socket with the
 * binary ABI of abi/SPEC.md; every call below is one request and its answer.
 *
 * Capabilities
 *   connection     mecha_connect, mecha_close, mecha_set_timeout
 *   state          mecha_state_get, mecha_state_set, mecha_state_delete
 *   lock           mecha_lock_try, mecha_lock_unlock
 *   pub/sub        mecha_publish, mecha_subscribe, mecha_subscription_next,
 *                  mecha_message_ack, mecha_message_nack, mecha_message_data,
 *                  mecha_message_topic, mecha_message_id,
 *                  mecha_message_content_type, mecha_message_attempt,
 *                  mecha_message_free, mecha_subscription_close
 *   invoke         mecha_invoke, mecha_register, mecha_registration_next,
 *                  mecha_call_method, mecha_call_data,
 *                  mecha_call_content_type, mecha_call_caller_app_id,
 *                  mecha_call_reply, mecha_call_free, mecha_registration_close
 *   bindings       mecha_binding_invoke, mecha_binding_subscribe,
 *                  mecha_binding_subscription_next, mecha_binding_event_ack,
 *                  mecha_binding_event_nack, mecha_binding_event_data,
 *                  mecha_binding_event_name, mecha_binding_event_offset,
 *                  mecha_binding_event_attempt, mecha_binding_event_metadata,
 *                  mecha_binding_event_metadata_count,
 *                  mecha_binding_event_metadata_at, mecha_binding_event_free,
 *                  mecha_binding_subscription_close
 *   sequencer      mecha_next_id
 *   secrets        mecha_secret_get, mecha_secret_get_all
 *   configuration  mecha_config_get
 *   errors         mecha_last_error, mecha_status_name
 *   memory         mecha_free
 *
 * Status codes
 *   Every call that can fail returns a mecha_status. MECHA_OK (0) is success.
 *   Codes 1..11 are the daemon's answer, exactly the status codes of
 *   abi/SPEC.md section 5 (MECHA_NOT_FOUND = NOT_FOUND, ...). Negative codes
 *   are failures inside this library (no daemon answer). A code this header
 *   does not list (a newer daemon) is to be treated like MECHA_INTERNAL.
 *   Outcomes that are not errors in the ABI are not statuses here either: a
 *   lock held by somebody else (token 0), an unlock of a lock that is not
 *   held (mecha_unlock_status), a delete of a missing key (existed = 0).
 *
 * Error messages
 *   mecha_last_error() is the message of the last failed call made BY THE
 *   CALLING THREAD ("" when that call succeeded). It is never NULL, and stays
 *   valid until the thread's next call into the library, so copy it if you
 *   need it longer. A connection failure reads
 *   "is mechad running? socket: PATH (...)".
 *
 * Ownership
 *   - Strings and buffers passed IN are borrowed for the duration of the call
 *     only; the library never keeps or frees them. String arguments are
 *     NUL-terminated UTF-8; invalid UTF-8 is MECHA_ERR_INVALID.
 *   - Every buffer handed OUT (through a `char **`, `uint8_t **` or
 *     `char ***` parameter) is allocated by the library, owned by the caller,
 *     and released with mecha_free(); mecha_free(NULL) does nothing. Do not
 *     use free() on them.
 *   - Out parameters are written only on MECHA_OK. On any other status every
 *     pointer out parameter is set to NULL and every number to 0, so there is
 *     nothing to free after a failure.
 *   - A mecha_client is created by mecha_connect() and destroyed by
 *     mecha_close(), nothing else.
 *   - Out parameters documented as "may be NULL" are optional: pass NULL to
 *     skip that result. Every other pointer parameter must be non-NULL
 *     (MECHA_ERR_INVALID otherwise), except `store`, where NULL and "" both
 *     select the capability's default store.
 *   - Text results (ETags, versions, secret and configuration values) are
 *     NUL-terminated strings; a text result that itself contains a NUL byte
 *     cannot be returned as a C string and fails with MECHA_ERR_INVALID.
 *     State values are bytes with an explicit length (and an extra NUL after
 *     the last byte, not counted, so text values can be printed directly).
 *
 * Thread safety
 *   A mecha_client may be used by several threads at once: calls are
 *   internally synchronised and share the client's one connection, with
 *   requests of different threads in flight together (pipelined).
 *   mecha_set_timeout() waits for calls in progress on that client.
 *   mecha_close() must be called exactly once, after every other call on the
 *   client has returned. Messages of mecha_last_error() are per thread.
 *   A mecha_subscription, mecha_binding_subscription or mecha_registration,
 *   and the messages, events or calls it hands out, is used by one thread at
 *   a time (a call may be answered by
 *   another thread than the one that polled it). A registration is served
 *   only while somebody polls it: a thread must not mecha_invoke() an app id
 *   that only its own, unpolled registration serves (the call would wait
 *   for its deadline).
 *   A client must not be used in a child process after fork(); connect anew.
 *
 * Retries and deadlines
 *   Each call has a deadline (5 s unless changed with mecha_set_timeout()).
 *   Reads, conditional writes and mecha_next_id are retried within that
 *   deadline when the serving module is restarting (UNAVAILABLE); other
 *   writes and lock calls are sent once. A call that ran out of time is
 *   MECHA_DEADLINE_EXCEEDED. After MECHA_ERR_IO the connection is gone and
 *   every later call on the client fails the same way: close it and connect
 *   again.
 *
 * The library is written in Rust (clients/c); every entry point stops a
 * bug in it from unwinding into C and reports MECHA_ERR_PANIC instead.
 */
#ifndef MECHA_H
#define MECHA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header and library (major.minor.patch). */
#define MECHA_VERSION_MAJOR 0
#define MECHA_VERSION_MINOR 1
#define MECHA_VERSION_PATCH 0

/* Outcome of a call. 0..11: the ABI status codes (abi/SPEC.md section 5).
 * Negative: the library's own failures. */
typedef enum mecha_status {
    MECHA_OK = 0,                   /* success */
    MECHA_NOT_FOUND = 1,            /* the key, secret or item does not exist */
    MECHA_ETAG_MISMATCH = 2,        /* the given ETag is not the stored one; nothing changed */
    MECHA_INVALID_ARGUMENT = 3,     /* the daemon refused the request (empty key, zero TTL, unknown store, ...) */
    MECHA_UNKNOWN_OPCODE = 4,       /* the daemon does not serve this operation */
    MECHA_UNSUPPORTED_VERSION = 5,  /* no ABI version in common with the daemon */
    MECHA_PERMISSION_DENIED = 6,    /* the caller's tenant may not do this */
    MECHA_RESOURCE_EXHAUSTED = 7,   /* a limit was hit (frame size, quota, lock waiters, ...) */
    MECHA_UNAVAILABLE = 8,          /* the serving module is down or restarting; retry later */
    MECHA_DEADLINE_EXCEEDED = 9,    /* no answer within the call's deadline */
    MECHA_INTERNAL = 10,            /* a failure inside mecha or its backing store */
    MECHA_UNSUPPORTED = 11,         /* the component's driver does not implement this operation or option */

    MECHA_ERR_CONNECT = -1,         /* the socket could not be connected (is mechad running?) */
    MECHA_ERR_IO = -2,              /* the connection was lost; close the client and reconnect */
    MECHA_ERR_INVALID = -3,         /* a NULL or non-UTF-8 argument, or a result C cannot carry */
    MECHA_ERR_PROTOCOL = -4,        /* the daemon's answer could not be decoded */
    MECHA_ERR_NOMEM = -5,           /* a result buffer could not be allocated */
    MECHA_ERR_PANIC = -6            /* a bug in libmecha, caught before it reached C */
} mecha_status;

/* Outcome of mecha_lock_unlock(), which is not an error status. */
typedef enum mecha_unlock_status {
    MECHA_UNLOCK_SUCCESS = 0,                /* the owner held the lock; it is released */
    MECHA_UNLOCK_LOCK_DOES_NOT_EXIST = 1,    /* nobody holds it (never taken, released, or lease over) */
    MECHA_UNLOCK_LOCK_BELONGS_TO_OTHERS = 2  /* another owner holds it; nothing changed */
} mecha_unlock_status;

/* A connection to mechad. Opaque. */
typedef struct mecha_client mecha_client;

/* ---- connection -------------------------------------------------------- */

/* Connects to mechad and negotiates the ABI version (HELLO).
 * socket_path: the daemon's socket; NULL selects the default rule, the same
 *   as mechactl's: $MECHA_SOCKET, else /run/mecha/mecha.sock for root, else
 *   $XDG_RUNTIME_DIR/mecha/mecha.sock (or $TMPDIR/mecha-UID/mecha.sock).
 * out: receives the new client (NULL on failure). Release it with
 *   mecha_close().
 * Returns MECHA_OK, MECHA_ERR_CONNECT when nothing listens at the path (the
 *   message names it), or the daemon's status if it refused the handshake. */
mecha_status mecha_connect(const char *socket_path, mecha_client **out);

/* Closes the connection and frees the client. NULL is ignored. No call on
 * the client may be in progress or follow. */
void mecha_close(mecha_client *client);

/* Sets the deadline of every later call on `client`, in milliseconds
 * (0 restores the default of 5000). A lock wait extends its call's deadline
 * by the wait, see mecha_lock_try(). */
mecha_status mecha_set_timeout(mecha_client *client, uint32_t timeout_ms);

/* ---- state ------------------------------------------------------------- */

/* Reads `key` from the state store `store` (NULL/"" = default store).
 * value, value_len: receive the value bytes (followed by a NUL that
 *   value_len does not count); free *value with mecha_free().
 * etag: may be NULL; receives the value's ETag; free with mecha_free().
 * Returns MECHA_NOT_FOUND when the key is missing or has expired. */
mecha_status mecha_state_get(mecha_client *client, const char *store, const char *key,
                             uint8_t **value, size_t *value_len, char **etag);

/* Writes `key`.
 * value, value_len: the bytes to store; value may be NULL when value_len is 0.
 * etag: NULL for an unconditional write (last write wins); else the write
 *   happens only if the key's current ETag equals it (first write wins),
 *   MECHA_ETAG_MISMATCH otherwise.
 * ttl_ms: 0 = no expiry (and clears an earlier TTL); else the key expires
 *   that many milliseconds after this write.
 * new_etag: may be NULL; receives the key's new ETag; free with mecha_free(). */
mecha_status mecha_state_set(mecha_client *client, const char *store, const char *key,
                             const uint8_t *value, size_t value_len, const char *etag,
                             uint64_t ttl_ms, char **new_etag);

/* Deletes `key`. etag: NULL for an unconditional delete, else as in
 * mecha_state_set(). existed: may be NULL; receives 1 if a live key was
 * removed, 0 if there was none (which is not an error). */
mecha_status mecha_state_delete(mecha_client *client, const char *store, const char *key,
                                const char *etag, int *existed);

/* ---- lock -------------------------------------------------------------- */

/* Tries to take the lock `resource` in `store` (NULL/"" = default) for
 * `owner`, as a lease of ttl_ms milliseconds (must be > 0).
 * wait_ms: 0 = answer at once; else wait up to that long for a held lock to
 *   be released or its lease to end (the call's deadline grows by wait_ms).
 * token: receives the grant's fencing token (>= 1, growing with every grant
 *   of the resource), or 0 when the lock was NOT acquired because somebody,
 *   this owner included, holds it. Not acquiring is MECHA_OK with token 0.
 * Lock calls are never retried by the library: a lost answer may have
 * granted the lock. */
mecha_status mecha_lock_try(mecha_client *client, const char *store, const char *resource,
                            const char *owner, uint64_t ttl_ms, uint64_t wait_ms,
                            uint64_t *token);

/* Releases the lock `resource` if `owner` holds it.
 * result: may be NULL; receives a mecha_unlock_status value saying whether
 *   the lock was released (MECHA_OK is returned in all three cases). */
mecha_status mecha_lock_unlock(mecha_client *client, const char *store, const char *resource,
                               const char *owner, int *result);

/* ---- pub/sub ----------------------------------------------------------- */

/* A membership of a consumer group (mecha_subscribe). Opaque. Use it from one
 * thread at a time; close every subscription before closing its client. */
typedef struct mecha_subscription mecha_subscription;

/* One delivered message (mecha_subscription_next). Opaque: read it with the
 * mecha_message_* accessors, whose pointers stay valid until
 * mecha_message_free(). */
typedef struct mecha_message mecha_message;

/* Publishes data_len bytes of `data` to `topic` of the pub/sub store `store`
 * (NULL/"" = default) as a CloudEvent. content_type: NULL for the daemon's
 * default. A publish is not retried by the library (it could be stored twice). */
mecha_status mecha_publish(mecha_client *client, const char *store, const char *topic,
                           const uint8_t *data, size_t data_len, const char *content_type);

/* Joins the consumer group `group` of `topic`: each message goes to one member
 * of each group (at least once). subscription: receives the new subscription;
 * close it with mecha_subscription_close(). The subscription subscribes again
 * by itself when the pub/sub module restarts. */
mecha_status mecha_subscribe(mecha_client *client, const char *store, const char *topic,
                             const char *group, mecha_subscription **subscription);

/* Waits up to timeout_ms (0 = only what has already arrived) for the next
 * message. message: receives the message, or NULL (with MECHA_OK) when none
 * came in time; free it with mecha_message_free(). Returns MECHA_UNAVAILABLE
 * once the subscription has ended for good. */
mecha_status mecha_subscription_next(mecha_subscription *subscription, uint32_t timeout_ms,
                                     mecha_message **message);

/* Acknowledges a message: it is not delivered to the group again. A message
 * neither acknowledged nor rejected is delivered again after its ack deadline. */
mecha_status mecha_message_ack(mecha_subscription *subscription, const mecha_message *message);

/* Rejects a message: it is delivered again soon, to this or another member. */
mecha_status mecha_message_nack(mecha_subscription *subscription, const mecha_message *message);

/* The message's data; data_len (may be NULL) receives its length. Not NUL-terminated. */
const uint8_t *mecha_message_data(const mecha_message *message, size_t *data_len);

/* The topic, CloudEvents id and content type of a message ("" for none). */
const char *mecha_message_topic(const mecha_message *message);
const char *mecha_message_id(const mecha_message *message);
const char *mecha_message_content_type(const mecha_message *message);

/* 1 for the message's first delivery to this group, then one more per redelivery. */
uint32_t mecha_message_attempt(const mecha_message *message);

/* Frees a message. NULL is ignored. */
void mecha_message_free(mecha_message *message);

/* Leaves the group and frees the subscription; its unacknowledged messages go
 * to the other members at once. NULL is ignored. */
void mecha_subscription_close(mecha_subscription *subscription);

/* ---- invoke ------------------------------------------------------------ */

/* An app id served on a client's connection (mecha_register). Opaque. Use it
 * from one thread at a time; close every registration before closing its
 * client. Calls are delivered on the client's own connection: the program
 * opens no port. */
typedef struct mecha_registration mecha_registration;

/* One call delivered to a registration (mecha_registration_next). Opaque:
 * read it with the mecha_call_* accessors, whose pointers stay valid until
 * mecha_call_free(). */
typedef struct mecha_call mecha_call;

/* Calls `method` of the app `app_id` (on this node or another) with data_len
 * bytes of `data`. content_type: NULL for application/octet-stream.
 * response, response_len: receive the callee's reply body (NUL-terminated
 *   after response_len bytes, for text); free with mecha_free().
 * The status is the callee's: MECHA_NOT_FOUND when no instance serves the
 * app id and method, MECHA_UNAVAILABLE when the callee went away, or any
 * status the callee answered (its message in mecha_last_error()). A call is
 * not retried by the library (it may have had effects). */
mecha_status mecha_invoke(mecha_client *client, const char *app_id, const char *method,
                          const uint8_t *data, size_t data_len, const char *content_type,
                          uint8_t **response, size_t *response_len);

/* Serves the app id `app_id` on the client's connection, every method.
 * registration: receives the registration; close it with
 *   mecha_registration_close(). While it is open, calls queue up for
 *   mecha_registration_next(): poll it often, since callers wait (within
 *   their deadline). The registration registers again by itself when the
 *   invoke module restarts.
 * MECHA_PERMISSION_DENIED when the tenant may not serve the app id. */
mecha_status mecha_register(mecha_client *client, const char *app_id,
                            mecha_registration **registration);

/* Waits up to timeout_ms (0 = only what has already arrived) for the next
 * call. call: receives the call, or NULL (with MECHA_OK) when none came in
 * time; answer it with mecha_call_reply() and free it with mecha_call_free().
 * Returns MECHA_UNAVAILABLE once the registration has ended for good. */
mecha_status mecha_registration_next(mecha_registration *registration, uint32_t timeout_ms,
                                     mecha_call **call);

/* The method called, the media type of the data ("" for none) and the app id
 * the caller called as ("" for an anonymous caller). */
const char *mecha_call_method(const mecha_call *call);
const char *mecha_call_content_type(const mecha_call *call);
const char *mecha_call_caller_app_id(const mecha_call *call);

/* The call's data; data_len (may be NULL) receives its length. Not NUL-terminated. */
const uint8_t *mecha_call_data(const mecha_call *call, size_t *data_len);

/* Answers a call, once. status: MECHA_OK with data_len bytes of `data` as the
 * reply body (content_type: NULL for none), or a daemon status (1..11, e.g.
 * MECHA_INTERNAL for a failure, MECHA_INVALID_ARGUMENT for a bad request)
 * with `data` as the error message the caller reads. A library code (< 0)
 * is MECHA_ERR_INVALID. Calls may be answered in any order, and from another
 * thread than the one polling, as long as the call and the registration are
 * used by one thread at a time. Answering after the caller's deadline is
 * MECHA_OK: the answer is dropped. */
mecha_status mecha_call_reply(mecha_registration *registration, mecha_call *call, int status,
                              const uint8_t *data, size_t data_len, const char *content_type);

/* Frees a call. A call freed without an answer fails with MECHA_INTERNAL for
 * its caller. NULL is ignored. */
void mecha_call_free(mecha_call *call);

/* Stops serving the app id and frees the registration; calls not yet taken
 * by mecha_registration_next() fail for their callers. NULL is ignored. */
void mecha_registration_close(mecha_registration *registration);

/* ---- bindings ---------------------------------------------------------- */

/* A subscriber of an input binding (mecha_binding_subscribe). Opaque. Use it
 * from one thread at a time; close every subscription before closing its
 * client. */
typedef struct mecha_binding_subscription mecha_binding_subscription;

/* One event of an input binding (mecha_binding_subscription_next). Opaque:
 * read it with the mecha_binding_event_* accessors, whose pointers stay valid
 * until mecha_binding_event_free(). */
typedef struct mecha_binding_event mecha_binding_event;

/* Runs `operation` on the output binding `name` (a component of type
 * bindings.*; deploy/COMPONENTS.md lists each type's operations and
 * parameters) with data_len bytes of `data` as its input.
 * metadata: the operation's parameters, 2 * metadata_count strings, name
 *   then value for each (e.g. {"fileName", "a.txt"}); NULL when
 *   metadata_count is 0.
 * response, response_len: receive the result body (NUL-terminated after
 *   response_len bytes, for text); free with mecha_free().
 * response_metadata: may be NULL; receives the result's metadata as ONE
 *   allocation laid out as in mecha_secret_get_all() (name then value for
 *   each entry, ending with NULL); free it with a single mecha_free().
 * response_metadata_count: may be NULL; receives the number of entries.
 * Returns MECHA_NOT_FOUND when no binding has that name (or, for some types,
 * when what the operation names does not exist), MECHA_INVALID_ARGUMENT for
 * an operation the type does not define or an input binding,
 * MECHA_PERMISSION_DENIED when the binding's allowedTenants refuse the
 * caller, MECHA_UNAVAILABLE when the outside system failed. Not retried by
 * the library: an operation may have taken effect outside. */
mecha_status mecha_binding_invoke(mecha_client *client, const char *name, const char *operation,
                                  const uint8_t *data, size_t data_len,
                                  const char *const *metadata, size_t metadata_count,
                                  uint8_t **response, size_t *response_len,
                                  char ***response_metadata, size_t *response_metadata_count);

/* Subscribes to the input binding `name`: every tenant allowed to use it
 * receives each event once (at least once), shared among the tenant's
 * subscribers. subscription: receives the new subscription; close it with
 * mecha_binding_subscription_close(). The subscription subscribes again by
 * itself when the bindings module restarts. */
mecha_status mecha_binding_subscribe(mecha_client *client, const char *name,
                                     mecha_binding_subscription **subscription);

/* Waits up to timeout_ms (0 = only what has already arrived) for the next
 * event. event: receives the event, or NULL (with MECHA_OK) when none came in
 * time; free it with mecha_binding_event_free(). Returns MECHA_UNAVAILABLE
 * once the subscription has ended for good. */
mecha_status mecha_binding_subscription_next(mecha_binding_subscription *subscription,
                                             uint32_t timeout_ms, mecha_binding_event **event);

/* Acknowledges an event: it is not delivered to this tenant again. An event
 * neither acknowledged nor rejected is delivered again after its ack
 * deadline (30 s). */
mecha_status mecha_binding_event_ack(mecha_binding_subscription *subscription,
                                     const mecha_binding_event *event);

/* Rejects an event: it is delivered again soon, to this or another subscriber. */
mecha_status mecha_binding_event_nack(mecha_binding_subscription *subscription,
                                      const mecha_binding_event *event);

/* The event's data; data_len (may be NULL) receives its length. Not
 * NUL-terminated. Empty for a cron tick. */
const uint8_t *mecha_binding_event_data(const mecha_binding_event *event, size_t *data_len);

/* The binding the event came from. */
const char *mecha_binding_event_name(const mecha_binding_event *event);

/* The event's position in the tenant's sequence of the binding's events (from 1). */
uint64_t mecha_binding_event_offset(const mecha_binding_event *event);

/* 1 for the event's first delivery to this tenant, then one more per redelivery. */
uint32_t mecha_binding_event_attempt(const mecha_binding_event *event);

/* The value of the event's metadata entry `name` (a cron tick's "time", ...),
 * or NULL when it has none. */
const char *mecha_binding_event_metadata(const mecha_binding_event *event, const char *name);

/* The number of metadata entries, and entry `index` (0-based): *name and
 * *value (each may be NULL) receive pointers owned by the event, or NULL
 * when index is out of range. */
size_t mecha_binding_event_metadata_count(const mecha_binding_event *event);
void mecha_binding_event_metadata_at(const mecha_binding_event *event, size_t index,
                                     const char **name, const char **value);

/* Frees an event. NULL is ignored. */
void mecha_binding_event_free(mecha_binding_event *event);

/* Ends the subscription and frees it; its unacknowledged events go to the
 * tenant's other subscribers at once. NULL is ignored. */
void mecha_binding_subscription_close(mecha_binding_subscription *subscription);

/* ---- sequencer --------------------------------------------------------- */

/* The next id of the sequence `key` in `store` (NULL/"" = default). Ids of a
 * key start at 1 and only grow, also across daemon restarts; they may skip
 * values. */
mecha_status mecha_next_id(mecha_client *client, const char *store, const char *key,
                           uint64_t *id);

/* ---- secrets ----------------------------------------------------------- */

/* Reads the single-value secret `name` from the secret store `store`
 * (NULL/"" = the first secret store).
 * value: receives the secret's value; free with mecha_free().
 * A single-value secret is the pair (name, value) (abi/SPEC.md 7.7). A
 * multi-valued secret without a key equal to `name` is MECHA_ERR_INVALID:
 * read it with mecha_secret_get_all(). Returns MECHA_NOT_FOUND when the
 * store holds no such secret, MECHA_PERMISSION_DENIED when the store's allow
 * lists refuse it. */
mecha_status mecha_secret_get(mecha_client *client, const char *store, const char *name,
                              char **value);

/* Reads every (key, value) pair of secret `name`, sorted by key.
 * pairs: receives ONE allocation holding an array of 2 * *count + 1 string
 *   pointers, key then value for each pair, ending with NULL, followed by
 *   the strings themselves: free the whole with a single mecha_free(*pairs).
 *   Pair i is pairs[2*i] = pairs[2*i+1].
 * count: receives the number of pairs (a secret may have none). */
mecha_status mecha_secret_get_all(mecha_client *client, const char *store, const char *name,
                                  char ***pairs, size_t *count);

/* ---- configuration ----------------------------------------------------- */

/* Reads the configuration item `key` of `store` (NULL/"" = default).
 * value: receives the item's value; free with mecha_free().
 * version: may be NULL; receives the item's version, an opaque string that
 *   changes with every change of the item; free with mecha_free().
 * Returns MECHA_NOT_FOUND when the store has no such item. (Metadata and
 * watching for changes are not in this version.) */
mecha_status mecha_config_get(mecha_client *client, const char *store, const char *key,
                              char **value, char **version);

/* ---- errors and memory ------------------------------------------------- */

/* The message of the calling thread's last failed call, "" after a success;
 * never NULL; valid until this thread's next call into the library. */
const char *mecha_last_error(void);

/* The name of a status code: "OK", "NOT_FOUND", ... "ERR_CONNECT", ...;
 * "UNKNOWN" for a code this library does not define. A static string. */
const char *mecha_status_name(int status);

/* Frees a buffer the library handed out. NULL is ignored. */
void mecha_free(void *ptr);

#ifdef __cplusplus
}
#endif

#endif /* MECHA_H */
