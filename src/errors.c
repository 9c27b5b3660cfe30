/* errors.c - owns celeriac_strerror(), generated from CELERIAC_ERRNO_MAP; it does not log or keep state. */
#include "celeriac.h"

const char *celeriac_strerror(int err)
{
    switch (err) {
#define CELERIAC_ERRNO_CASE(name, num, text)                                   \
    case (num):                                                                \
        return (text);
        CELERIAC_ERRNO_MAP(CELERIAC_ERRNO_CASE)
#undef CELERIAC_ERRNO_CASE
    default:
        return "unknown error";
    }
}
