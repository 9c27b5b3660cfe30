/* test.h - a tiny unit-test harness: TEST(name) registers a test; the binary
 * runs one test by name (as ctest does, one process per test) or all. */
#ifndef CELERIAC_TEST_H
#define CELERIAC_TEST_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *expr);
/* Reads a whole file (NUL appended); caller frees with free(). Aborts the test if missing. */
char *test_read_file(const char *path, size_t *len);
/* Reads protocol/fixtures/<name>. */
char *test_fixture(const char *name, size_t *len);

#define TEST(name)                                                             \
    static void test_##name(void);                                             \
    __attribute__((constructor)) static void register_##name(void)             \
    {                                                                          \
        test_register(#name, test_##name);                                     \
    }                                                                          \
    static void test_##name(void)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            test_fail(__FILE__, __LINE__, #cond);                              \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                     \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (a_ != b_) {                                                        \
            fprintf(stderr, "  %lld != %lld\n", a_, b_);                       \
            test_fail(__FILE__, __LINE__, #a " == " #b);                       \
        }                                                                      \
    } while (0)
#define CHECK_STR(a, b)                                                        \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                               \
            fprintf(stderr, "  \"%s\" != \"%s\"\n", a_ ? a_ : "(null)",        \
                    b_ ? b_ : "(null)");                                       \
            test_fail(__FILE__, __LINE__, #a " == " #b);                       \
        }                                                                      \
    } while (0)

#endif
