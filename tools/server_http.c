/* server_http.c: the HTTP side of `flash-moe serve`, on libmicrohttpd with one thread per
 * connection. It checks the route, the API key (constant time) and the declared body
 * size before reading a body, buffers the body up to --max-body, validates UTF-8 and
 * JSON, hands the request to the OpenAI or Anthropic route, and answers either with one
 * JSON body or with an SSE stream fed by the generation worker. A client that goes away
 * (seen with poll(POLLRDHUP) while waiting) cancels its job. */
#include "server.h"

#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { FAM_OPENAI = 0, FAM_ANTHROPIC };
enum { R_NONE = 0, R_HEALTH, R_MODELS, R_MODEL, R_CHAT, R_COMPLETIONS, R_MESSAGES, R_COUNT };

typedef struct req_ctx {
    int route, family;
    srv_buf body;
    int too_big;
} req_ctx;

typedef struct stream_ctx {
    server *srv;
    srv_job *job;
    int fd;
    double last_write;  /* monotonic seconds of the last bytes handed to MHD */
} stream_ctx;

#define KEEPALIVE_S 10.0 /* SSE comment after this long without output (queue, prefill) */

static double now_s(void) { return srv_now(); }

/* ---- small helpers ----------------------------------------------------------------- */

static int ct_equal(const char *given, const char *key) {
    size_t gn = strlen(given), kn = strlen(key);
    unsigned char d = (unsigned char)(gn != kn);
    for (size_t i = 0; i < kn; i++) d |= (unsigned char)((i < gn ? given[i] : 0) ^ key[i]);
    return d == 0;
}

static int authorized(server *s, struct MHD_Connection *c) {
    if (!s->cfg.api_key) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *x = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-api-key");
    int ok = 0;
    if (a && strncasecmp(a, "Bearer ", 7) == 0) ok |= ct_equal(a + 7, s->cfg.api_key);
    if (x) ok |= ct_equal(x, s->cfg.api_key);
    return ok;
}

static int client_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* True when the peer closed or reset the connection. */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static void deadline_in(struct timespec *ts, long ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

static enum MHD_Result send_body(struct MHD_Connection *c, int status, const char *ctype, char *body,
                                 const char *retry_after) {
    if (!body) {
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}");
        status = 500;
        if (!body) return MHD_NO;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) { free(body); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static const char *anthropic_type(int status) {
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "overloaded_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

static const char *openai_type(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static enum MHD_Result send_error(struct MHD_Connection *c, int family, int status, const char *msg,
                                  const char *param) {
    char *b = family == FAM_ANTHROPIC ? srv_anthropic_error(anthropic_type(status), msg)
                                      : srv_openai_error(openai_type(status), msg, param);
    return send_body(c, status, "application/json", b, status == 429 || status == 503 ? "1" : NULL);
}

/* ---- routes ------------------------------------------------------------------------ */

static int route_of(const char *url, const char *method, int *family, int *want_post) {
    *family = strncmp(url, "/v1/messages", 12) == 0 ? FAM_ANTHROPIC : FAM_OPENAI;
    *want_post = 1;
    if (strcmp(url, "/v1/chat/completions") == 0) return R_CHAT;
    if (strcmp(url, "/v1/completions") == 0) return R_COMPLETIONS;
    if (strcmp(url, "/v1/messages") == 0) return R_MESSAGES;
    if (strcmp(url, "/v1/messages/count_tokens") == 0) return R_COUNT;
    *want_post = 0;
    if (strcmp(url, "/health") == 0) return R_HEALTH;
    if (strcmp(url, "/v1/models") == 0) return R_MODELS;
    if (strncmp(url, "/v1/models/", 11) == 0) return R_MODEL;
    (void)method;
    return R_NONE;
}

static cJSON *model_obj(server *s) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->cfg.model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddStringToObject(m, "type", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "created_at", "1970-01-01T00:00:00Z");
    cJSON_AddStringToObject(m, "display_name", s->cfg.model_id);
    cJSON_AddStringToObject(m, "owned_by", "flash-moe");
    cJSON_AddNumberToObject(m, "context_length", s->info.n_ctx);
    return m;
}

static enum MHD_Result get_route(server *s, struct MHD_Connection *c, req_ctx *r, const char *url) {
    cJSON *o;
    if (r->route == R_HEALTH) {
        o = cJSON_CreateObject();
        pthread_mutex_lock(&s->mu);
        cJSON_AddStringToObject(o, "status", "ok");
        cJSON_AddStringToObject(o, "model", s->cfg.model_id);
        cJSON_AddNumberToObject(o, "busy", s->busy);
        cJSON_AddNumberToObject(o, "queued", s->n_waiting);
        cJSON_AddNumberToObject(o, "queue_limit", s->cfg.queue);
        cJSON_AddNumberToObject(o, "generations", (double)s->n_generations);
        cJSON_AddNumberToObject(o, "rejected", (double)s->n_rejected);
        cJSON_AddNumberToObject(o, "cancelled", (double)s->n_cancelled);
        cJSON_AddNumberToObject(o, "reused_tokens", (double)s->reused_tokens);
        cJSON_AddNumberToObject(o, "prefill_tokens", (double)s->prefill_tokens);
        cJSON_AddNumberToObject(o, "prefill_done", (double)s->prefill_done);
        cJSON_AddNumberToObject(o, "prefill_total", (double)s->prefill_total);
        pthread_mutex_unlock(&s->mu);
    } else if (r->route == R_MODELS) {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        cJSON_AddItemToArray(d, model_obj(s));
        cJSON_AddBoolToObject(o, "has_more", 0);
        cJSON_AddStringToObject(o, "first_id", s->cfg.model_id);
        cJSON_AddStringToObject(o, "last_id", s->cfg.model_id);
    } else {
        if (strcmp(url + 11, s->cfg.model_id) != 0)
            return send_error(c, r->family, 404, "model not found", "model");
        o = model_obj(s);
    }
    char *b = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return send_body(c, 200, "application/json", b, NULL);
}

/* SSE body: blocks until the worker has output, the job ends, or the client leaves. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream_ctx *x = cls;
    srv_job *j = x->job;
    server *s = x->srv;
    ssize_t ret;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (j->out_sent < j->out.n) {
            size_t n = j->out.n - j->out_sent;
            if (n > max) n = max;
            memcpy(buf, j->out.p + j->out_sent, n);
            j->out_sent += n;
            if (j->out_sent == j->out.n) j->out_sent = j->out.n = 0;
            ret = (ssize_t)n;
            x->last_write = now_s();
            break;
        }
        if (j->state == JOB_DONE) { ret = MHD_CONTENT_READER_END_OF_STREAM; break; }
        if (now_s() - x->last_write > KEEPALIVE_S && max >= 16) {
            /* at an event boundary (the buffer is drained): a comment line, which SSE
             * clients ignore, keeps proxies and client timeouts from closing the stream */
            memcpy(buf, ": keep-alive\n\n", 14);
            x->last_write = now_s();
            ret = 14;
            break;
        }
        struct timespec ts;
        deadline_in(&ts, SRV_POLL_MS);
        pthread_cond_timedwait(&j->cv, &s->mu, &ts);
        if (j->out_sent < j->out.n) continue;
        /* on shutdown the worker still ends every job, so the stream ends cleanly */
        if (client_gone(x->fd)) {
            ret = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (ret == MHD_CONTENT_READER_END_WITH_ERROR) srv_job_cancel(j);
    return ret;
}

static void stream_free(void *cls) {
    stream_ctx *x = cls;
    srv_job_cancel(x->job); /* no-op when done */
    srv_job_unref(x->job);
    free(x);
}

static enum MHD_Result run_job(server *s, struct MHD_Connection *c, req_ctx *r, srv_job *j) {
    if (srv_queue_push(j) != 0) {
        srv_job_unref(j);
        return send_error(c, r->family, 429, "too many requests are waiting; retry later", NULL);
    }
    int fd = client_fd(c);
    if (j->stream) {
        stream_ctx *x = calloc(1, sizeof *x);
        if (!x) { srv_job_cancel(j); srv_job_unref(j); return MHD_NO; }
        x->srv = s;
        x->job = j;
        x->fd = fd;
        x->last_write = now_s();
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
                                                                      stream_read, x, stream_free);
        if (!resp) { stream_free(x); return MHD_NO; }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    pthread_mutex_lock(&s->mu);
    int gone = 0;
    while (j->state != JOB_DONE) {
        struct timespec ts;
        deadline_in(&ts, SRV_POLL_MS);
        pthread_cond_timedwait(&j->cv, &s->mu, &ts);
        if (j->state != JOB_DONE && client_gone(fd)) { gone = 1; break; }
    }
    pthread_mutex_unlock(&s->mu);
    if (gone) {
        srv_job_cancel(j);
        srv_job_unref(j);
        return MHD_NO;
    }
    enum MHD_Result ret;
    if (j->finish == FIN_ERROR)
        ret = send_error(c, r->family, j->err_status, j->err_msg, NULL);
    else if (j->finish == FIN_CANCEL)
        ret = send_error(c, r->family, 503, "the request was cancelled", NULL);
    else
        ret = send_body(c, 200, "application/json",
                        r->family == FAM_ANTHROPIC ? srv_anthropic_result(j) : srv_openai_result(j), NULL);
    srv_job_unref(j);
    return ret;
}

static enum MHD_Result post_route(server *s, struct MHD_Connection *c, req_ctx *r) {
    if (r->too_big) {
        char m[96];
        snprintf(m, sizeof m, "the request body exceeds the limit of %lld bytes", (long long)s->cfg.max_body);
        return send_error(c, r->family, 413, m, NULL);
    }
    if (!srv_utf8_valid(r->body.p ? r->body.p : "", r->body.n))
        return send_error(c, r->family, 400, "the request body is not valid UTF-8", NULL);
    cJSON *req = cJSON_ParseWithLength(r->body.p ? r->body.p : "", r->body.n);
    if (!req) return send_error(c, r->family, 400, "the request body is not valid JSON", NULL);
    char msg[512] = "";
    const char *param = NULL;
    int status = 400;
    srv_job *j = NULL;
    enum MHD_Result ret;
    switch (r->route) {
    case R_CHAT: j = srv_openai_chat(s, req, &status, msg, sizeof msg, &param); break;
    case R_COMPLETIONS: j = srv_openai_completion(s, req, &status, msg, sizeof msg, &param); break;
    case R_MESSAGES: j = srv_anthropic_messages(s, req, &status, msg, sizeof msg); break;
    case R_COUNT: {
        char *b = srv_anthropic_count(s, req, &status, msg, sizeof msg);
        cJSON_Delete(req);
        if (b) return send_body(c, 200, "application/json", b, NULL);
        return send_error(c, r->family, status, msg, NULL);
    }
    }
    /* param points into req: send the error before freeing it */
    if (!j) ret = send_error(c, r->family, status, msg, param);
    cJSON_Delete(req);
    if (!j) return ret;
    return run_job(s, c, r, j);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    (void)version;
    server *s = cls;
    req_ctx *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *con_cls = r;
        int want_post;
        r->route = route_of(url, method, &r->family, &want_post);
        if (r->route == R_NONE) {
            char m[200];
            snprintf(m, sizeof m, "unknown endpoint %.8s %.100s", method, url);
            return send_error(c, r->family, 404, m, NULL);
        }
        if (strcmp(method, want_post ? "POST" : "GET") != 0 &&
            !(strcmp(method, "HEAD") == 0 && !want_post)) {
            char m[200];
            snprintf(m, sizeof m, "method %.8s is not allowed on %.100s", method, url);
            return send_error(c, r->family, 405, m, NULL);
        }
        if (r->route != R_HEALTH && !authorized(s, c))
            return send_error(c, r->family, 401, "invalid or missing API key", NULL);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || (long long)v > s->cfg.max_body) {
                char m[96];
                snprintf(m, sizeof m, "the request body exceeds the limit of %lld bytes", (long long)s->cfg.max_body);
                return send_error(c, r->family, 413, m, NULL);
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!r->too_big) {
            if ((long long)(r->body.n + *upload_size) > s->cfg.max_body) {
                r->too_big = 1;
                sb_free(&r->body);
            } else {
                sb_put(&r->body, upload, *upload_size);
                if (r->body.oom) return MHD_NO;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->route == R_HEALTH || r->route == R_MODELS || r->route == R_MODEL) return get_route(s, c, r, url);
    return post_route(s, c, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls; (void)c; (void)toe;
    req_ctx *r = *con_cls;
    if (!r) return;
    sb_free(&r->body);
    free(r);
    *con_cls = NULL;
}

int srv_run(server *s) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof port, "%d", s->cfg.port);
    int gai = getaddrinfo(s->cfg.host, port, &hints, &ai);
    if (gai != 0 || !ai) {
        fprintf(stderr, "flash-moe: cannot resolve --host %s: %s\n", s->cfg.host, gai_strerror(gai));
        return 1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* signals go to the main thread only */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    signal(SIGPIPE, SIG_IGN);
    if (srv_queue_start(s) != 0) {
        freeaddrinfo(ai);
        fprintf(stderr, "flash-moe: cannot start the generation thread\n");
        return 1;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg.timeout,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)256,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) {
        fprintf(stderr, "flash-moe: cannot listen on %s:%d: %s\n", s->cfg.host, s->cfg.port, strerror(errno));
        srv_queue_stop(s);
        return 1;
    }
    int loopback = strcmp(s->cfg.host, "localhost") == 0 || strncmp(s->cfg.host, "127.", 4) == 0 ||
                   strcmp(s->cfg.host, "::1") == 0;
    if (!loopback && !s->cfg.api_key)
        fprintf(stderr, "flash-moe: warning: listening on %s without --api-key: anyone who can reach "
                "this address can use the model\n", s->cfg.host);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int bound = di ? di->port : s->cfg.port;
    fprintf(stderr, "flash-moe: serving %s on http://%s:%d (queue %d, max body %lld bytes%s)\n",
            s->cfg.model_id, s->cfg.host, bound, s->cfg.queue, (long long)s->cfg.max_body,
            s->cfg.api_key ? ", API key required" : "");
    fflush(stderr);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "flash-moe: %s received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    MHD_socket listen_fd = MHD_quiesce_daemon(d); /* no new connections */
    srv_queue_stop(s);     /* the running job stops at its next token; queued ones fail */
    /* let the connections send those last replies (at most 3 s) */
    for (int i = 0; i < 300; i++) {
        pthread_mutex_lock(&s->mu);
        int left = s->n_jobs;
        pthread_mutex_unlock(&s->mu);
        if (!left) break;
        usleep(10000);
    }
    usleep(100000);
    MHD_stop_daemon(d);
    if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return 0;
}
