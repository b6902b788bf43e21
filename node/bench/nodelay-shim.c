/*
 * LD_PRELOAD shim: TCP_NODELAY on every accepted socket. Wraps accept and
 * accept4 and sets the option on the returned descriptor (a failure, e.g.
 * on a Unix socket, is ignored). Used by compare-drift.sh to measure
 * driftdb-server 0.1.4, which leaves Nagle on, with Nagle off as well.
 * hyper 0.14's AddrIncoming (the server's listener) calls
 * set_nodelay(false) on each accepted socket right after accept4, so
 * setsockopt is wrapped too: a request to turn TCP_NODELAY off is turned
 * into one to turn it on.
 *
 *   cc -shared -fPIC -O2 -o nodelay-shim.so nodelay-shim.c -ldl
 *   LD_PRELOAD=./nodelay-shim.so driftdb-server --port 8080
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*setsockopt_fn)(int, int, int, const void *, socklen_t);

int setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
    static setsockopt_fn real;
    static const int one = 1;
    if (!real)
        real = (setsockopt_fn)dlsym(RTLD_NEXT, "setsockopt");
    if (level == IPPROTO_TCP && name == TCP_NODELAY && val && len >= (socklen_t)sizeof(int) &&
        *(const int *)val == 0)
        val = &one;
    return real(fd, level, name, val, len);
}

static void nodelay(int fd) {
    int one = 1;
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int accept(int s, struct sockaddr *addr, socklen_t *len) {
    static accept_fn real;
    if (!real)
        real = (accept_fn)dlsym(RTLD_NEXT, "accept");
    int fd = real(s, addr, len);
    nodelay(fd);
    return fd;
}

int accept4(int s, struct sockaddr *addr, socklen_t *len, int flags) {
    static accept4_fn real;
    if (!real)
        real = (accept4_fn)dlsym(RTLD_NEXT, "accept4");
    int fd = real(s, addr, len, flags);
    nodelay(fd);
    return fd;
}
