/*
 * openloop: a fixed-rate (open-loop) HTTP/1.1 load generator for bench/run.py.
 *
 * Why: wrk is closed-loop. Each connection waits for its answer before sending again, so when the
 * server stalls, wrk stops sending and the stall is counted once ("coordinated omission"). Here request
 * k is due at start + k / rate whatever happened before, and its latency runs from that intended
 * send time to the end of its answer (the method of wrk2 and Gil Tene's HdrHistogram talks). A request
 * that waits for a free connection or a slow server is charged for the wait.
 *
 * One thread, epoll, keep-alive connections (a server that closes them, such as gunicorn's sync
 * workers, is reconnected), epoll_pwait2's nanosecond timeout for the schedule (no busy polling: this
 * process shares the cores with the servers it measures), and every latency kept and sorted at the end.
 *
 * Requests are built from a template: "{}" in the path, a header value or the body is replaced by an
 * item, read one a line from -i FILE. Items cycle, unless -f FIELD is given: then each item is used
 * once (a refresh token), and every 200 answer's JSON string member FIELD is queued as a new item
 * (the next token of that family). The token is read from the answer, never parsed.
 *
 * Usage: openloop -a HOST:PORT -r RATE -d SECONDS [-w WARMUP] [-c CONNECTIONS] [-g DRAIN]
 *                 [-m METHOD] [-p PATH] [-H "Name: value"]... [-b BODY] [-i ITEMS] [-f FIELD]
 *                 [-o LEFTOVER_FILE]
 * Prints one JSON object on stdout. Exit status: 0 done (the caller judges errors), 2 bad usage or setup.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 16
#define MAX_EVENTS 256
#define NS 1000000000LL

enum state { CLOSED, CONNECTING, IDLE, BUSY };

struct conn {
    int fd;
    enum state state;
    char *out;            /* the request being written */
    size_t out_len, out_off;
    char *in;             /* the answer being read */
    size_t in_len, in_cap;
    int64_t intended;     /* intended send time of the request in flight (ns, CLOCK_MONOTONIC) */
    int64_t sent;
    int record;           /* 0 during the warm-up */
};

/* A FIFO of strings: the items (ID tokens, identities, refresh tokens). */
struct queue {
    char **items;
    size_t head, len, cap;
};

static struct {
    struct sockaddr_in addr;
    const char *method, *path, *body, *field, *leftover;
    const char *headers[MAX_HEADERS];
    int nheaders;
    char host[128];
    double rate, duration, warmup, drain;
    int nconns;
} opt = {.method = "GET", .path = "/", .body = NULL, .rate = 0, .duration = 10, .warmup = 0, .drain = 5,
         .nconns = 64};

static struct queue items;
static size_t cycle_next;         /* next item when items cycle (no -f) */
static struct conn *conns;
static int *idle_ring;            /* FIFO of idle connection indexes: spreads requests over all of them */
static size_t idle_head, idle_len;
static int epfd;
static int64_t *latencies, *lags;
static size_t nlat, nlag;
static struct {
    uint64_t sent, completed, ok, non2xx, errors, starved, unfinished, connects;
    uint64_t status[6];           /* 1xx..5xx by hundreds, [0] others */
} stats;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("openloop: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("out of memory");
    return q;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static void push(struct queue *q, char *item) {
    if (q->len == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 1024;
        char **grown = xrealloc(NULL, cap * sizeof *grown);
        for (size_t i = 0; i < q->len; i++) grown[i] = q->items[(q->head + i) % q->cap];
        free(q->items);
        q->items = grown, q->head = 0, q->cap = cap;
    }
    q->items[(q->head + q->len++) % q->cap] = item;
}

static char *pop(struct queue *q) {
    if (!q->len) return NULL;
    char *item = q->items[q->head];
    q->head = (q->head + 1) % q->cap, q->len--;
    return item;
}

static void read_items(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot open %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n) push(&items, strdup(line));
    }
    free(line);
    fclose(f);
}

/* ------------------------------------------------------------------ requests */

struct buf {
    char *p;
    size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = 2 * (b->len + n + 1);
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* Append template with every "{}" replaced by item. */
static void expand(struct buf *b, const char *tmpl, const char *item) {
    const char *at;
    while ((at = strstr(tmpl, "{}"))) {
        put(b, tmpl, (size_t)(at - tmpl));
        puts_(b, item ? item : "");
        tmpl = at + 2;
    }
    puts_(b, tmpl);
}

static char *build_request(const char *item, size_t *len) {
    struct buf body = {0}, req = {0};
    if (opt.body) expand(&body, opt.body, item);
    puts_(&req, opt.method);
    puts_(&req, " ");
    expand(&req, opt.path, item);
    puts_(&req, " HTTP/1.1\r\nHost: ");
    puts_(&req, opt.host);
    puts_(&req, "\r\n");
    for (int i = 0; i < opt.nheaders; i++) {
        expand(&req, opt.headers[i], item);
        puts_(&req, "\r\n");
    }
    if (opt.body || strcmp(opt.method, "GET")) {  /* as wrk.format does: a POST says its length, even 0 */
        char length[48];
        snprintf(length, sizeof length, "Content-Length: %zu\r\n", body.len);
        puts_(&req, length);
    }
    puts_(&req, "\r\n");
    if (body.len) put(&req, body.p, body.len);
    free(body.p);
    *len = req.len;
    return req.p;
}

/* ------------------------------------------------------------------ connections */

static void idle_push(int i) {
    idle_ring[(idle_head + idle_len++) % (size_t)opt.nconns] = i;
}

static int idle_pop(void) {
    int i = idle_ring[idle_head];
    idle_head = (idle_head + 1) % (size_t)opt.nconns, idle_len--;
    return i;
}

static void conn_close(struct conn *c) {
    if (c->fd >= 0) close(c->fd);  /* close() also removes it from the epoll set */
    c->fd = -1;
    c->state = CLOSED;
    c->in_len = 0;
    free(c->out);
    c->out = NULL;
}

static int conn_open(struct conn *c, int index) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&opt.addr, sizeof opt.addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = (uint64_t)index};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    c->fd = fd;
    c->state = CONNECTING;
    stats.connects++;
    return 0;
}

/* Write what is left of the request; 0 when done or waiting for EPOLLOUT, -1 on error. */
static int conn_flush(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        c->out_off += (size_t)n;
    }
    return 0;
}

/* Close after an error. A request in flight is lost (and with it a chained token): counted as an
 * error, not as a latency, and the connection goes back to the idle ring, to be opened again. */
static void fail(struct conn *c, int index) {
    int in_flight = c->out != NULL;
    conn_close(c);
    if (in_flight) {
        stats.errors++;
        idle_push(index);
    }
}

static void send_on(int index, int64_t intended, int record) {
    struct conn *c = &conns[index];
    char *item = NULL;
    if (opt.field) {
        item = pop(&items);
        if (!item) {
            stats.starved++;
            idle_push(index);
            return;
        }
    } else if (items.len) {
        item = items.items[cycle_next++ % items.len];
    }
    c->out = build_request(item, &c->out_len);
    if (opt.field) free(item);
    c->out_off = 0;
    c->intended = intended;
    c->record = record;
    stats.sent++;
    if (c->state == CLOSED && conn_open(c, index) < 0) {
        fail(c, index);
        return;
    }
    c->sent = now_ns();
    if (c->state == IDLE) {
        c->state = BUSY;
        if (conn_flush(c) < 0) fail(c, index);
    }
    /* CONNECTING: the request goes out on EPOLLOUT, once connected */
}

/* ------------------------------------------------------------------ answers */

static const char *find_header(const char *head, size_t head_len, const char *name) {
    size_t n = strlen(name);
    const char *p = memchr(head, '\n', head_len);
    while (p && (size_t)(p - head) + 1 + n < head_len) {
        p++;
        if (!strncasecmp(p, name, n) && p[n] == ':') return p + n + 1;
        p = memchr(p, '\n', head_len - (size_t)(p - head));
    }
    return NULL;
}

/* Does the header value starting at value (up to its line end) contain word, in any case? */
static int value_has(const char *value, const char *word) {
    size_t n = strlen(word);
    for (; *value && *value != '\r' && *value != '\n'; value++)
        if (!strncasecmp(value, word, n)) return 1;
    return 0;
}

/* The JSON string member opt.field of body, copied; NULL when missing. Tokens hold no escapes. */
static char *extract_field(const char *body, size_t len) {
    char key[256];
    int n = snprintf(key, sizeof key, "\"%s\"", opt.field);
    const char *end = body + len, *p = memmem(body, len, key, (size_t)n);
    if (!p) return NULL;
    p += n;
    while (p < end && (*p == ' ' || *p == ':')) p++;
    if (p >= end || *p != '"') return NULL;
    const char *start = ++p;
    while (p < end && *p != '"') {
        if (*p == '\\') return NULL;
        p++;
    }
    return p < end ? strndup(start, (size_t)(p - start)) : NULL;
}

/* One whole answer in c->in? Then account for it and return 1 (keep_alive set), 0 if incomplete, -1 bad. */
static int parse_answer(struct conn *c, int *keep_alive) {
    char *head_end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!head_end) return 0;
    size_t head_len = (size_t)(head_end - c->in) + 4;
    if (c->in_len < 12 || strncmp(c->in, "HTTP/1.", 7)) return -1;
    int status = atoi(c->in + 9);
    const char *te = find_header(c->in, head_len, "transfer-encoding");
    if (te) return -1;  /* the servers measured send Content-Length; chunked answers are not read */
    const char *cl = find_header(c->in, head_len, "content-length");
    size_t body_len = cl ? strtoul(cl, NULL, 10) : 0;
    if (c->in_len < head_len + body_len) return 0;
    const char *conn_hdr = find_header(c->in, head_len, "connection");
    *keep_alive = c->in[7] == '1' && !(conn_hdr && value_has(conn_hdr, "close"));
    int64_t done = now_ns();
    stats.completed++;
    stats.status[status >= 100 && status < 600 ? status / 100 : 0]++;
    if (status >= 200 && status < 300) {
        stats.ok++;
        if (c->record) {
            latencies[nlat++] = done - c->intended;
            lags[nlag++] = c->sent - c->intended;
        }
    } else {
        stats.non2xx++;
    }
    if (opt.field) {
        char *next = status == 200 ? extract_field(c->in + head_len, body_len) : NULL;
        if (next) push(&items, next);
        else if (status == 200) stats.errors++;  /* a 200 without the field breaks the chain */
    }
    c->in_len = 0;
    return 1;
}

static void on_readable(int index) {
    struct conn *c = &conns[index];
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            c->in_cap = c->in_cap ? 2 * c->in_cap : 16384;
            c->in = xrealloc(c->in, c->in_cap);
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1, 0);
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) {  /* closed by the server: fine when idle (still in the idle ring), an error mid-request */
            fail(c, index);
            return;
        }
        c->in_len += (size_t)n;
        c->in[c->in_len] = 0;
        if (c->state != BUSY) continue;
        int keep_alive = 1;
        int r = parse_answer(c, &keep_alive);
        if (r < 0) {
            fail(c, index);
            return;
        }
        if (r == 1) {
            free(c->out);
            c->out = NULL;
            if (keep_alive) c->state = IDLE;
            else conn_close(c);
            idle_push(index);
            return;  /* nothing more comes before the next request; a FIN raises its own edge */
        }
    }
}

static void on_writable(int index) {
    struct conn *c = &conns[index];
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            fail(c, index);
            return;
        }
        c->state = BUSY;  /* a connection is only opened to send a request */
    }
    if (c->state == BUSY && conn_flush(c) < 0) fail(c, index);
}

/* ------------------------------------------------------------------ report */

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array, in milliseconds. */
static double pct_ms(const int64_t *v, size_t n, double p) {
    if (!n) return 0;
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return (double)v[rank - 1] / 1e6;
}

static void report(int64_t measured_ns, size_t answered) {
    qsort(latencies, nlat, sizeof *latencies, cmp_i64);
    qsort(lags, nlag, sizeof *lags, cmp_i64);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++) sum += (double)latencies[i];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"rate\": %.3f, \"duration\": %.3f, \"warmup\": %.3f, \"connections\": %d, ", opt.rate, opt.duration,
           opt.warmup, opt.nconns);
    printf("\"sent\": %llu, \"completed\": %llu, \"ok\": %llu, \"non2xx\": %llu, \"errors\": %llu, "
           "\"starved\": %llu, \"unfinished\": %llu, \"connects\": %llu, \"answered\": %zu, ",
           (unsigned long long)stats.sent, (unsigned long long)stats.completed, (unsigned long long)stats.ok,
           (unsigned long long)stats.non2xx, (unsigned long long)stats.errors, (unsigned long long)stats.starved,
           (unsigned long long)stats.unfinished, (unsigned long long)stats.connects, answered);
    printf("\"status\": {\"1xx\": %llu, \"2xx\": %llu, \"3xx\": %llu, \"4xx\": %llu, \"5xx\": %llu, \"other\": %llu}, ",
           (unsigned long long)stats.status[1], (unsigned long long)stats.status[2],
           (unsigned long long)stats.status[3], (unsigned long long)stats.status[4],
           (unsigned long long)stats.status[5], (unsigned long long)stats.status[0]);
    printf("\"achieved_rate\": %.3f, ", measured_ns > 0 ? (double)answered * 1e9 / (double)measured_ns : 0.0);
    printf("\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p99.9\": %.3f, \"max\": %.3f, "
           "\"mean\": %.3f}, ",
           pct_ms(latencies, nlat, 50), pct_ms(latencies, nlat, 90), pct_ms(latencies, nlat, 99),
           pct_ms(latencies, nlat, 99.9), nlat ? (double)latencies[nlat - 1] / 1e6 : 0.0,
           nlat ? sum / (double)nlat / 1e6 : 0.0);
    printf("\"send_lag_ms\": {\"p50\": %.3f, \"p99\": %.3f, \"max\": %.3f}, ", pct_ms(lags, nlag, 50),
           pct_ms(lags, nlag, 99), nlag ? (double)lags[nlag - 1] / 1e6 : 0.0);
    printf("\"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f}\n", (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
}

static void save_leftover(void) {
    if (!opt.leftover) return;
    FILE *f = fopen(opt.leftover, "w");
    if (!f) die("cannot write %s: %s", opt.leftover, strerror(errno));
    for (char *item; (item = pop(&items));) {
        fprintf(f, "%s\n", item);
        free(item);
    }
    fclose(f);
}

/* ------------------------------------------------------------------ main */

static void parse_args(int argc, char **argv) {
    const char *address = NULL, *items_path = NULL;
    int ch;
    while ((ch = getopt(argc, argv, "a:r:d:w:c:g:m:p:H:b:i:f:o:")) != -1) {
        switch (ch) {
        case 'a': address = optarg; break;
        case 'r': opt.rate = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'c': opt.nconns = atoi(optarg); break;
        case 'g': opt.drain = atof(optarg); break;
        case 'm': opt.method = optarg; break;
        case 'p': opt.path = optarg; break;
        case 'H':
            if (opt.nheaders == MAX_HEADERS) die("at most %d headers", MAX_HEADERS);
            opt.headers[opt.nheaders++] = optarg;
            break;
        case 'b': opt.body = optarg; break;
        case 'i': items_path = optarg; break;
        case 'f': opt.field = optarg; break;
        case 'o': opt.leftover = optarg; break;
        default: die("usage: see the comment at the top of openloop.c");
        }
    }
    if (!address || opt.rate <= 0 || opt.duration <= 0 || opt.nconns < 1 || opt.warmup < 0 || opt.drain < 0)
        die("need -a HOST:PORT, -r RATE > 0, -d SECONDS > 0, -c >= 1");
    const char *colon = strrchr(address, ':');
    if (!colon || (size_t)(colon - address) >= sizeof opt.host) die("bad address %s", address);
    memcpy(opt.host, address, (size_t)(colon - address));
    opt.addr.sin_family = AF_INET;
    opt.addr.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, opt.host, &opt.addr.sin_addr) != 1) die("need an IPv4 address, got %s", opt.host);
    snprintf(opt.host + strlen(opt.host), sizeof opt.host - strlen(opt.host), ":%s", colon + 1);
    if (items_path) read_items(items_path);
    if (opt.field && !items.len) die("-f needs a non-empty -i file of first items");
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    double interval = 1e9 / opt.rate;
    uint64_t total = (uint64_t)((opt.warmup + opt.duration) * opt.rate);
    uint64_t warm = (uint64_t)(opt.warmup * opt.rate);
    latencies = xrealloc(NULL, (total + 1) * sizeof *latencies);
    lags = xrealloc(NULL, (total + 1) * sizeof *lags);
    conns = calloc((size_t)opt.nconns, sizeof *conns);
    idle_ring = xrealloc(NULL, (size_t)opt.nconns * sizeof *idle_ring);
    if (!conns) die("out of memory");
    prctl(PR_SET_TIMERSLACK, 1UL);  /* wake on the schedule, not up to 50 us after it */
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));
    for (int i = 0; i < opt.nconns; i++) {
        conns[i].fd = -1;
        idle_push(i);
    }

    int64_t start = now_ns() + 10 * 1000 * 1000;  /* 10 ms from now: setup done */
    int64_t measure_from = start + (int64_t)(warm * interval);
    int64_t schedule_end = start + (int64_t)(total * interval);
    int64_t deadline = schedule_end + (int64_t)(opt.drain * NS);
    uint64_t next = 0;  /* index of the next request to send; its intended time is start + next * interval */
    struct epoll_event events[MAX_EVENTS];

    for (;;) {
        int64_t now = now_ns();
        uint64_t due = now < start ? 0 : (uint64_t)((double)(now - start) / interval) + 1;
        if (due > total) due = total;
        while (next < due && idle_len) {
            send_on(idle_pop(), start + (int64_t)((double)next * interval), next >= warm);
            next++;
        }
        uint64_t in_flight = (uint64_t)opt.nconns - idle_len;
        if ((next == total && !in_flight) || now >= deadline) break;
        /* Sleep until the next request is due (a nanosecond timeout), or until an answer frees a connection. */
        int64_t wake = deadline;
        if (next < total && next >= due) wake = start + (int64_t)((double)next * interval);
        else if (next < total) wake = -1;  /* due, but every connection is busy: wait for an answer */
        if (wake >= 0 && wake <= now) continue;
        struct timespec timeout = {.tv_sec = (wake - now) / NS, .tv_nsec = (wake - now) % NS};
        int n = epoll_pwait2(epfd, events, MAX_EVENTS, wake < 0 ? NULL : &timeout, NULL);
        if (n < 0 && errno != EINTR) die("epoll_pwait2: %s", strerror(errno));
        for (int e = 0; e < n; e++) {
            int index = (int)events[e].data.u64;
            uint32_t ev = events[e].events;
            if (conns[index].state == CONNECTING || (ev & EPOLLOUT && conns[index].state == BUSY)) {
                if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(index);
            }
            if (conns[index].state != CLOSED && ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                on_readable(index);
        }
    }
    int64_t measured_end = now_ns();
    if (measured_end > schedule_end) measured_end = schedule_end;
    /* What is still in flight at the deadline did not finish within the drain time: charged with the
     * time it waited so far, so the tail shows it. */
    size_t answered = nlat;
    int64_t end = now_ns();
    for (int i = 0; i < opt.nconns; i++) {
        struct conn *c = &conns[i];
        if (c->out) {
            stats.unfinished++;
            if (c->record) latencies[nlat++] = end - c->intended;
        }
    }
    for (; next < total; next++) {  /* never sent: every connection was stuck until the deadline */
        stats.unfinished++;
        if (next >= warm) latencies[nlat++] = end - (start + (int64_t)((double)next * interval));
    }
    report(measured_end - measure_from, answered);
    save_leftover();
    return 0;
}
