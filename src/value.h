/* value.h - the internal layout of celeriac_value and helpers the daemon needs
 * beyond the public API (Python-style repr, limits). Plugins never see this. */
#ifndef CELERIAC_VALUE_H
#define CELERIAC_VALUE_H

#include "celeriac.h"

struct celeriac_value {
    celeriac_type type;
    union {
        int b;
        int64_t i;
        double d;
        struct {
            char *p;    /* NUL-terminated (len excludes the NUL); part of the node's allocation, never reassigned */
            size_t len;
        } s;            /* STRING and BYTES */
        struct {
            celeriac_value **items; /* owned */
            size_t len, cap;
        } a;
        struct {
            char **keys;            /* owned (value_key_dup), NUL-terminated, never written */
            celeriac_value **vals;  /* owned */
            size_t len, cap;
        } o;
    } u;
};

/* Python repr() of v as Celery would print it (None, True, 'text', [1, 2],
 * {'k': 'v'}, b'..'), cut at max_len bytes with "..." appended when longer.
 * Caller frees with free(); NULL when out of memory. */
char *value_repr(const celeriac_value *v, size_t max_len);
/* Python repr() of an args array as a tuple: "(1, 2)", "('x',)". */
char *value_repr_tuple(const celeriac_value *args, size_t max_len);
/* Member lookup returning a string (STRING only), or NULL. Borrowed. */
const char *value_get_str(const celeriac_value *obj, const char *key);
/* Takes ownership of nothing; removes and returns a member (caller frees). */
celeriac_value *value_take(celeriac_value *obj, const char *key);
/* Python repr() of a float into buf (shortest text that reads back the same
 * double: "0.1", "1e+20", "1.5", "inf", "nan"). Returns the length. */
size_t value_double_repr(double d, char buf[32]);
/* Removes and returns element i of an ARRAY (caller frees); NULL when out of range. */
celeriac_value *value_take_at(celeriac_value *arr, size_t i);
/* Appends a member to an OBJECT without looking for an existing key (the
 * caller knows keys are unique, e.g. a decoder). Takes ownership of key
 * (from value_key_dup) and item, also on failure. */
int value_object_push(celeriac_value *obj, char *key, celeriac_value *item);
/* An object key: a NUL-terminated copy of len bytes at s, or NULL when out
 * of memory. The names Celery's messages and results use (headers, id,
 * task, delivery_info, ...) are not copied: the result points into a
 * read-only table, so a key is never written to, and only ever released
 * with value_key_free() (which frees copies and leaves table keys). */
char *value_key_dup(const char *s, size_t len);
void value_key_free(char *key);
/* 0 when the key table's index agrees with the table (unit-tested). */
int value_key_table_check(void);
/* Decodes one UTF-8 sequence at p (n bytes available): returns its length
 * and stores the code point in *cp, or returns 0 when it is not valid UTF-8
 * (overlong forms and surrogates are invalid). */
size_t value_utf8_next(const unsigned char *p, size_t n, unsigned *cp);

#endif
