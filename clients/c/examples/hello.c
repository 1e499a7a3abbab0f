/*
 * hello.c - a first program with libmecha: connect, write and read a state
 * key, take and release a lock, draw an id from a sequence.
 *
 *   cc hello.c $(pkg-config --cflags --libs mecha) -o hello
 *   ./hello [SOCKET]        # no SOCKET: $MECHA_SOCKET or the default path
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <mecha.h>

/* Prints the failed step with the library's message and gives up. */
static int fail(const char *what, mecha_status st) {
    fprintf(stderr, "hello: %s failed: %s: %s\n", what, mecha_status_name(st),
            mecha_last_error());
    return 1;
}

int main(int argc, char **argv) {
    mecha_client *client = NULL;
    mecha_status st = mecha_connect(argc > 1 ? argv[1] : NULL, &client);
    if (st != MECHA_OK)
        return fail("connect", st);

    /* Write a value; the library returns the key's new ETag (ours to free). */
    const char *greeting = "hello from C";
    char *etag = NULL;
    st = mecha_state_set(client, NULL, "hello:greeting", (const uint8_t *)greeting,
                         strlen(greeting), NULL, 0, &etag);
    if (st != MECHA_OK)
        return fail("state set", st);

    /* Read it back: bytes plus length (NUL-terminated, so printable). */
    uint8_t *value = NULL;
    size_t len = 0;
    char *read_etag = NULL;
    st = mecha_state_get(client, NULL, "hello:greeting", &value, &len, &read_etag);
    if (st != MECHA_OK)
        return fail("state get", st);
    printf("state: %s (%zu bytes, etag %s, unchanged: %s)\n", (const char *)value, len,
           read_etag, strcmp(etag, read_etag) == 0 ? "yes" : "no");
    mecha_free(value);
    mecha_free(read_etag);
    mecha_free(etag);

    /* A lease of 10 s; token 0 would mean somebody else holds the lock. */
    uint64_t token = 0;
    st = mecha_lock_try(client, NULL, "hello:lock", "hello-example", 10000, 0, &token);
    if (st != MECHA_OK)
        return fail("lock", st);
    printf("lock: %s, fencing token %" PRIu64 "\n", token ? "acquired" : "held by others", token);
    if (token && (st = mecha_lock_unlock(client, NULL, "hello:lock", "hello-example", NULL)) != MECHA_OK)
        return fail("unlock", st);

    uint64_t id = 0;
    st = mecha_next_id(client, NULL, "hello:ids", &id);
    if (st != MECHA_OK)
        return fail("next id", st);
    printf("next id: %" PRIu64 "\n", id);

    mecha_close(client);
    return 0;
}
