/* The compiled front of `mydocker`: cli/forkclient.py's exchange with the warm CLI server, without an interpreter.
 *
 * Starting Python costs ~8-10 ms on a small VM, most of what a short command pays in front of the
 * server; this does the same hand-off in well under one. The protocol, the messages and every
 * outcome are cli/forkclient.py's (the reference, kept as the fallback front): the command line,
 * environment and umask go to the server with our directory and stdio as fds, our signals are
 * forwarded to the worker, and we exit with its status. Without a server (none, a stale one,
 * MYDOCKER_CLI_SERVER=off) the CLI runs in-process: we exec the venv's Python on `-m cli`.
 *
 * Built by scripts/up (scripts/lib/bootstrap.sh: ensure_front) into .venv/bin/mydocker-front; the
 * ./mydocker launcher uses it while it is newer than this file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define PROTOCOL 1
#define MAX_PACKET (1 << 16)
#define DEFAULT_RUN "/run/mydocker"

extern char **environ;

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGUSR1, SIGUSR2};
#define NFORWARDED (sizeof forwarded / sizeof forwarded[0])

static volatile sig_atomic_t worker;
static volatile sig_atomic_t pending[NFORWARDED];
static volatile sig_atomic_t first_pending;

static void forward(int signum) {
    if (worker > 0) {
        kill(worker, signum);
        return;
    }
    for (size_t i = 0; i < NFORWARDED; i++)
        if (forwarded[i] == signum) pending[i]++;
    if (!first_pending) first_pending = signum;
}

static void install_forwarders(void) {
    struct sigaction action = {0};
    action.sa_handler = forward;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < NFORWARDED; i++) sigaction(forwarded[i], &action, NULL);
}

static void set_worker(pid_t pid) {
    worker = pid;
    for (size_t i = 0; i < NFORWARDED; i++)
        for (; pending[i] > 0; pending[i]--) kill(pid, forwarded[i]);
}

/* Nothing ran: the CLI runs here, in a fresh Python (as `python -m cli`); a signal that came meanwhile ends it unstarted. */
static void run_in_process(int argc, char **argv) {
    if (first_pending) _exit(128 + first_pending);
    char exe[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", exe, sizeof exe - sizeof "python");
    char *slash = length > 0 ? memrchr(exe, '/', (size_t)length) : NULL;
    if (slash == NULL) {
        fprintf(stderr, "mydocker: cannot find the Python environment next to this program: run scripts/up\n");
        _exit(1);
    }
    strcpy(slash + 1, "python");
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (args == NULL) _exit(1);
    args[0] = exe;
    args[1] = "-P";
    args[2] = "-m";
    args[3] = "cli";
    for (int i = 1; i < argc; i++) args[i + 3] = argv[i];
    execv(exe, args);
    fprintf(stderr, "mydocker: cannot run %s: %s: run scripts/up\n", exe, strerror(errno));
    _exit(1);
}

/* <MYDOCKER_RUN>/cli.sock, as services.common.config.Config resolves it; 0 when it does not fit. */
static int socket_path(char *out, size_t size) {
    const char *run = getenv("MYDOCKER_RUN");
    if (run == NULL || *run == '\0') run = DEFAULT_RUN;
    char cwd[PATH_MAX] = "";
    if (run[0] != '/') {
        if (getcwd(cwd, sizeof cwd) == NULL) return 0;
        size_t end = strlen(cwd);
        while (end > 0 && cwd[end - 1] == '/') cwd[--end] = '\0';
        strcat(cwd, "/");
    }
    size_t end = strlen(run);
    while (end > 0 && run[end - 1] == '/') end--;
    int written = snprintf(out, size, "%s%.*s/cli.sock", cwd, (int)end, run);
    return written > 0 && (size_t)written < size;
}

/* A marshal-encoded request, as Python's marshal.loads reads it. */
struct buffer {
    unsigned char data[MAX_PACKET];
    size_t used;
    int overflow;
};

static void put(struct buffer *b, const void *bytes, size_t size) {
    if (b->overflow || size > sizeof b->data - b->used) {
        b->overflow = 1;
        return;
    }
    memcpy(b->data + b->used, bytes, size);
    b->used += size;
}

static void put_le32(struct buffer *b, int32_t value) {
    unsigned char bytes[4] = {value & 0xff, (value >> 8) & 0xff, (value >> 16) & 0xff, ((uint32_t)value >> 24) & 0xff};
    put(b, bytes, sizeof bytes);
}

/* One marshal item whose payload starts with a 32-bit little-endian number: 'i' (an int), '(' and '[' (a count), 's' (a length). */
static void put_typed(struct buffer *b, char type, int32_t value) {
    put(b, &type, 1);
    put_le32(b, value);
}

static void put_bytes(struct buffer *b, const char *bytes, size_t size) {
    if (size > INT32_MAX) {
        b->overflow = 1;
        return;
    }
    put_typed(b, 's', (int32_t)size);
    put(b, bytes, size);
}

static void encode_request(struct buffer *b, int argc, char **argv, mode_t umask_value) {
    put_typed(b, '(', 5);
    put(b, "z\3run", 5);
    put_typed(b, 'i', PROTOCOL);
    put_typed(b, '[', argc - 1);
    for (int i = 1; i < argc; i++) put_bytes(b, argv[i], strlen(argv[i]));
    put(b, "{", 1);
    for (char **entry = environ; *entry; entry++) {
        char *equals = strchr(*entry, '=');
        if (equals == NULL) continue;
        put_bytes(b, *entry, (size_t)(equals - *entry));
        put_bytes(b, equals + 1, strlen(equals + 1));
    }
    put(b, "0", 1);
    put_typed(b, 'i', (int32_t)umask_value);
}

/* A reply: (kind, value) with kind "pid", "exit" or "fallback" and value an int for the first two. */
struct reply {
    char kind[16];
    int has_int;
    int32_t value;
};

static int32_t read_int32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

static int decode_reply(const unsigned char *p, size_t size, struct reply *out) {
    const unsigned char *end = p + size;
    size_t count;
    if (p >= end) return 0;
    unsigned char type = *p++ & 0x7f; /* 0x80 is marshal's FLAG_REF */
    if (type == ')') {
        if (p >= end) return 0;
        count = *p++;
    } else if (type == '(') {
        if (end - p < 4) return 0;
        count = (size_t)read_int32(p);
        p += 4;
    } else {
        return 0;
    }
    if (count < 2 || p >= end) return 0;
    type = *p++ & 0x7f;
    size_t length;
    if (type == 'z' || type == 'Z') {
        if (p >= end) return 0;
        length = *p++;
    } else if (type == 'a' || type == 'A' || type == 'u') {
        if (end - p < 4) return 0;
        length = (size_t)read_int32(p);
        p += 4;
    } else {
        return 0;
    }
    if (length >= sizeof out->kind || (size_t)(end - p) < length) return 0;
    memcpy(out->kind, p, length);
    out->kind[length] = '\0';
    p += length;
    out->has_int = 0;
    if (p < end && (*p & 0x7f) == 'i' && end - p >= 5) {
        out->has_int = 1;
        out->value = read_int32(p + 1);
    }
    return 1;
}

/* The worker's exit status, or -1 when nothing ran (the CLI should run in-process). */
static int delegate(int argc, char **argv) {
    const char *mode = getenv("MYDOCKER_CLI_SERVER");
    if (mode != NULL && strcmp(mode, "off") == 0) return -1;
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (!socket_path(address.sun_path, sizeof address.sun_path)) return -1;
    int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    /* The lowest free fd: 0, 1 or 2 when one of our stdio is closed, which the in-process CLI copes with. */
    if (cwd < 3) return -1;
    int conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (conn < 0 || connect(conn, (struct sockaddr *)&address, sizeof address) < 0) return -1;
    install_forwarders();
    mode_t umask_value = umask(022);
    umask(umask_value);
    static struct buffer request;
    encode_request(&request, argc, argv, umask_value);
    if (request.overflow) return -1; /* more than one packet: the in-process CLI takes any size */

    int fds[4] = {cwd, 0, 1, 2};
    char control[CMSG_SPACE(sizeof fds)] = {0};
    struct iovec iov = {.iov_base = request.data, .iov_len = request.used};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(header), fds, sizeof fds);
    ssize_t sent;
    do sent = sendmsg(conn, &message, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) return -1; /* the server cannot take it: the CLI runs here */
    close(cwd);

    static unsigned char packet[MAX_PACKET];
    int started = 0;
    for (;;) {
        ssize_t got = recv(conn, packet, sizeof packet, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            if (!started) return -1;
            fprintf(stderr, "mydocker: the CLI server's worker vanished before reporting its exit status\n");
            return 1;
        }
        struct reply reply;
        if (!decode_reply(packet, (size_t)got, &reply)) {
            fprintf(stderr, "mydocker: the CLI server sent an unreadable packet: restart it with scripts/up\n");
            return 1;
        }
        if (strcmp(reply.kind, "pid") == 0 && reply.has_int) {
            started = 1;
            set_worker(reply.value);
        } else if (strcmp(reply.kind, "exit") == 0 && reply.has_int) {
            /* An exit before the pid: the worker died before it took the command (the server's log says why). */
            return started ? reply.value : -1;
        } else if (strcmp(reply.kind, "fallback") == 0 && !started) {
            return -1;
        }
    }
}

int main(int argc, char **argv) {
    int status = delegate(argc, argv);
    if (status < 0) {
        const char *mode = getenv("MYDOCKER_CLI_SERVER");
        if (mode != NULL && strcmp(mode, "require") == 0) {
            char path[sizeof ((struct sockaddr_un *)0)->sun_path + PATH_MAX];
            if (!socket_path(path, sizeof path)) strcpy(path, "(a path too long for a socket)");
            fprintf(stderr, "mydocker: no CLI server answers at %s (MYDOCKER_CLI_SERVER=require): run scripts/up\n", path);
            _exit(1);
        }
        run_in_process(argc, argv);
    }
    _exit(status);
}
