/*
 * iobench: a small libiscsi load generator used by scripts/bench-vs-tgt.
 *
 *   iobench -m seqread|randread|seqwrite|hold -b BYTES -q QD [-j SESSIONS] [-t SECS] [-i IQN] URL
 *
 * Keeps QD commands (READ16 or WRITE16) in flight on each of SESSIONS sessions for SECS
 * seconds; random offsets are aligned to BYTES.  -i: initiator name (default one per
 * process and session; with several sessions, "-N" is appended to it).  "hold" logs SESSIONS sessions in, does one
 * 4 KiB read on each, prints "connected" and keeps them open for SECS seconds (for RSS).
 * Prints one line: "ios=N secs=S iops=X MiBps=Y bytes=B".  Exit status 1 on any error.
 * Build: gcc -O2 -o iobench iobench.c -liscsi
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

struct conn;
struct req { struct conn *c; unsigned char *buf; struct scsi_iovec iov; };
struct conn { struct iscsi_context *ctx; int lun; uint64_t next; int busy; };

static int writing, randomly, stop, failed;
static uint32_t bs = 4096, blk = 512;
static uint64_t units, done, tend;
static uint64_t seed = 0x9e3779b97f4a7c15ULL;

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static uint64_t rnd(void)
{
    seed ^= seed << 7;
    seed ^= seed >> 9;
    return seed;
}

static void issue(struct req *r);

static void on_done(struct iscsi_context *ctx, int status, void *data, void *priv)
{
    struct req *r = priv;
    struct scsi_task *task = data;
    r->c->busy--;
    if (status != SCSI_STATUS_GOOD) {
        fprintf(stderr, "iobench: command failed, status %d: %s\n", status, iscsi_get_error(ctx));
        failed = stop = 1;
    } else if (mono_ns() <= tend) {
        done++;
    }
    scsi_free_scsi_task(task);
    if (mono_ns() >= tend)
        stop = 1;
    if (!stop)
        issue(r);
}

static void issue(struct req *r)
{
    struct conn *c = r->c;
    uint64_t unit;
    struct scsi_task *t;
    if (randomly) {
        unit = rnd() % units;
    } else {
        unit = c->next++ % units;
    }
    uint64_t lba = unit * (bs / blk);
    if (writing) {
        t = iscsi_write16_task(c->ctx, c->lun, lba, r->buf, bs, blk, 0, 0, 0, 0, 0, on_done, r);
    } else {
        t = iscsi_read16_task(c->ctx, c->lun, lba, bs, blk, 0, 0, 0, 0, 0, on_done, r);
        if (t)
            scsi_task_set_iov_in(t, &r->iov, 1);
    }
    if (!t) {
        fprintf(stderr, "iobench: cannot queue: %s\n", iscsi_get_error(c->ctx));
        failed = stop = 1;
        return;
    }
    c->busy++;
}

int main(int argc, char **argv)
{
    const char *mode = "randread";
    const char *iname = NULL;
    int qd = 1, nconn = 1, opt, hold = 0;
    double secs = 5;
    while ((opt = getopt(argc, argv, "m:b:q:j:t:i:")) != -1) {
        switch (opt) {
        case 'm': mode = optarg; break;
        case 'b': bs = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'q': qd = atoi(optarg); break;
        case 'j': nconn = atoi(optarg); break;
        case 't': secs = atof(optarg); break;
        case 'i': iname = optarg; break;
        default: return 2;
        }
    }
    if (optind != argc - 1 || qd < 1 || nconn < 1 || bs == 0) {
        fprintf(stderr, "usage: iobench -m seqread|randread|seqwrite|hold -b BYTES -q QD [-j N] [-t SECS] [-i IQN] URL\n");
        return 2;
    }
    if (!strcmp(mode, "randread")) randomly = 1;
    else if (!strcmp(mode, "seqwrite")) writing = 1;
    else if (!strcmp(mode, "hold")) { hold = 1; randomly = 1; qd = 1; }
    else if (strcmp(mode, "seqread")) { fprintf(stderr, "iobench: unknown mode %s\n", mode); return 2; }
    seed ^= (uint64_t)getpid() << 17;

    struct conn *cs = calloc(nconn, sizeof *cs);
    struct pollfd *pf = calloc(nconn, sizeof *pf);
    struct req *rs = calloc((size_t)nconn * qd, sizeof *rs);
    for (int i = 0; i < nconn; i++) {
        char name[128];
        if (iname && nconn == 1)
            snprintf(name, sizeof name, "%s", iname);
        else if (iname)
            snprintf(name, sizeof name, "%s-%d", iname, i);
        else
            snprintf(name, sizeof name, "iqn.2026-11.org.isboot:iobench-%d-%d", (int)getpid(), i);
        struct iscsi_context *ctx = iscsi_create_context(name);
        struct iscsi_url *u = ctx ? iscsi_parse_full_url(ctx, argv[optind]) : NULL;
        if (!u) { fprintf(stderr, "iobench: bad URL %s\n", argv[optind]); return 1; }
        iscsi_set_targetname(ctx, u->target);
        iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL);
        iscsi_set_header_digest(ctx, ISCSI_HEADER_DIGEST_NONE);
        if (iscsi_full_connect_sync(ctx, u->portal, u->lun)) {
            fprintf(stderr, "iobench: login: %s\n", iscsi_get_error(ctx));
            return 1;
        }
        cs[i].ctx = ctx;
        cs[i].lun = u->lun;
        iscsi_destroy_url(u);
        if (i == 0) {
            struct scsi_task *t = iscsi_readcapacity16_sync(ctx, cs[0].lun);
            struct scsi_readcapacity16 *rc = t && t->status == SCSI_STATUS_GOOD ? scsi_datain_unmarshall(t) : NULL;
            if (!rc) { fprintf(stderr, "iobench: READ CAPACITY(16) failed\n"); return 1; }
            blk = rc->block_length;
            if (bs % blk) { fprintf(stderr, "iobench: %u is not a multiple of %u\n", bs, blk); return 1; }
            units = (rc->returned_lba + 1) * blk / bs;
            scsi_free_scsi_task(t);
        }
        cs[i].next = units / nconn * i;
        for (int k = 0; k < qd; k++) {
            struct req *r = &rs[i * qd + k];
            r->c = &cs[i];
            if (posix_memalign((void **)&r->buf, 4096, bs)) return 1;
            for (uint32_t o = 0; o < bs; o += 8) { uint64_t v = rnd(); memcpy(r->buf + o, &v, 8); }
            r->iov.iov_base = r->buf;
            r->iov.iov_len = bs;
        }
    }
    uint64_t t0 = mono_ns();
    tend = hold ? t0 : t0 + (uint64_t)(secs * 1e9);
    for (int i = 0; i < nconn * qd; i++)
        issue(&rs[i]);
    for (;;) {
        int busy = 0;
        for (int i = 0; i < nconn; i++) {
            pf[i].fd = iscsi_get_fd(cs[i].ctx);
            pf[i].events = iscsi_which_events(cs[i].ctx);
            busy += cs[i].busy;
        }
        if (!busy) break;
        if (poll(pf, nconn, 200) < 0 && errno != EINTR) { perror("poll"); return 1; }
        for (int i = 0; i < nconn; i++)
            if (pf[i].revents && iscsi_service(cs[i].ctx, pf[i].revents) < 0) {
                fprintf(stderr, "iobench: %s\n", iscsi_get_error(cs[i].ctx));
                return 1;
            }
        if (mono_ns() > tend + 30000000000ULL) { fprintf(stderr, "iobench: drain timeout\n"); return 1; }
    }
    if (hold) {
        printf("connected %d\n", nconn);
        fflush(stdout);
        usleep((useconds_t)(secs * 1e6));
    }
    uint64_t t1 = mono_ns();
    double el = ((t1 < tend ? t1 : tend) - t0) / 1e9;
    for (int i = 0; i < nconn; i++) {
        iscsi_logout_sync(cs[i].ctx);
        iscsi_destroy_context(cs[i].ctx);
    }
    if (!hold)
        printf("ios=%" PRIu64 " secs=%.3f iops=%.1f MiBps=%.2f bytes=%" PRIu64 "\n", done, el,
               done / el, done * (double)bs / el / 1048576.0, done * (uint64_t)bs);
    return failed;
}
