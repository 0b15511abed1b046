// SPDX-License-Identifier: GPL-2.0-only
/*
 * pvmprobe: a minimal VMM of a protected guest on /dev/cloister that takes
 * its own donated page through the kernel's GUP-based paths. The guest reads
 * its second page (so both are donated) and powers off; its pages stay the
 * guest's until the VM fd is closed at exit.
 *
 *   pvmprobe gup [NAME]  process_vm (readv/writev), proc_mem (/proc/self/mem
 *                        read/write), vmsplice (GUP-fast), ptrace
 *                        (PEEKDATA/POKEDATA from a child), fork (after
 *                        MADV_DOFORK): all of them, or only NAME
 *   pvmprobe pipe        vmsplice() the second page into a pipe before the
 *                        guest touches it: the driver must not donate a page
 *                        that something else holds; then read the pipe
 *   pvmprobe teardown    close the VM, then process_vm_readv() the page the
 *                        hypervisor gave back (zeroed)
 *   pvmprobe thp         the guest in one 2 MiB THP (if the kernel has THP):
 *                        GUP of donated and host pages of the same folio
 *   pvmprobe memfd       the guest on memfd (MAP_SHARED) memory, then
 *                        pread(2) of the memfd
 *
 * Each probe prints "probe <name>: <result>"; PVMPROBE_DEBUG=1 traces the
 * setup and lists the donated pages (debugfs must be mounted).
 *
 * With host patch 0005: process_vm_readv/writev and vmsplice EFAULT,
 * /proc/self/mem and ptrace EIO, the forked child sees zeroes, the pipe's
 * page is not donated (KVM_RUN: EFAULT, KVM_EXIT_MEMORY_FAULT) and the pipe
 * reads the secret, the page after teardown reads zeroes; memfd still oopses
 * the host (docs/dev-cloister.md, "Known hazards"). Without it each of
 * process_vm, proc_mem, ptrace, fork and pipe oopses the host.
 *
 * Build (the 6.12 uapi headers, for KVM_EXIT_MEMORY_FAULT):
 *   make headers_install ARCH=arm64 INSTALL_HDR_PATH=/tmp/hdr
 *   aarch64-linux-gnu-gcc -static -O2 -Wall -isystem /tmp/hdr/include \
 *           -o pvmprobe pvmprobe.c
 *
 * Run it in a scratch clone: put the binary in stacks/rootfs/host/opt/, have
 * etc/init.d/rcS run it with the arguments passed on the kernel command line
 * and power off, then `cargo xtask run --timeout 120 --append "..."`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/kvm.h>

#define RAM_BASE	0x80000000ULL
#define RAM_SIZE	(16 * 4096UL)
#define PAGE		4096UL
#define VM_PROTECTED	(1UL << 31)

static const char secret[] = "pvmprobe-secret-7e21";
static uint8_t *mem;
static int vmfd, vcpufd, memfd = -1;
static struct kvm_run *run;

static int verbose;
#define dbg(...) do { if (verbose) fprintf(stderr, __VA_ARGS__); } while (0)

static void die(const char *what)
{
	printf("probe setup: %s: %s\n", what, strerror(errno));
	exit(1);
}

static const char *err(long ret)
{
	static char buf[64];

	if (ret >= 0) {
		snprintf(buf, sizeof(buf), "ok (%ld)", ret);
		return buf;
	}
	return strerrorname_np(errno) ? strerrorname_np(errno) : "?";
}

/* The guest: ldr x2, [RAM_BASE + 0x1000]; PSCI SYSTEM_OFF; b . */
static const uint32_t guest[] = {
	0xd2820001,	/* mov x1, #0x1000 */
	0xf2b00001,	/* movk x1, #0x8000, lsl #16 */
	0xf9400022,	/* ldr x2, [x1] */
	0xd2800100,	/* mov x0, #0x8 */
	0xf2b08000,	/* movk x0, #0x8400, lsl #16 */
	0xd4000002,	/* hvc #0 */
	0x14000000,	/* b . */
};

#define THP_SIZE	(2UL << 20)

static void setup(int use_memfd)
{
	struct kvm_userspace_memory_region region = { 0 };
	struct kvm_vcpu_init init;
	struct kvm_one_reg reg;
	uint64_t pc = RAM_BASE;
	int dev;
	size_t i;

	dev = open("/dev/cloister", O_RDWR);
	if (dev < 0)
		die("/dev/cloister");
	dbg("/dev/cloister ok\n");
	vmfd = ioctl(dev, KVM_CREATE_VM, VM_PROTECTED);
	if (vmfd < 0)
		die("KVM_CREATE_VM");
	dbg("KVM_CREATE_VM ok\n");
	if (use_memfd == 2) {
		/* A 2 MiB-aligned anonymous THP, if the kernel gives one. */
		uint8_t *p = mmap(NULL, 2 * THP_SIZE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			die("mmap");
		mem = (uint8_t *)(((uintptr_t)p + THP_SIZE - 1) & ~(THP_SIZE - 1));
		madvise(mem, THP_SIZE, MADV_HUGEPAGE);
	} else if (use_memfd) {
		memfd = memfd_create("pvmprobe", 0);
		if (memfd < 0 || ftruncate(memfd, RAM_SIZE))
			die("memfd");
		mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
			   memfd, 0);
	} else {
		mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	}
	if (mem == MAP_FAILED)
		die("mmap");
	dbg("mmap ok\n");
	memcpy(mem, guest, sizeof(guest));
	for (i = 0; i + sizeof(secret) <= PAGE; i += sizeof(secret))
		memcpy(mem + PAGE + i, secret, sizeof(secret));

	region.guest_phys_addr = RAM_BASE;
	region.memory_size = use_memfd == 2 ? THP_SIZE : RAM_SIZE;
	region.userspace_addr = (uintptr_t)mem;
	if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region))
		die("KVM_SET_USER_MEMORY_REGION");
	dbg("KVM_SET_USER_MEMORY_REGION ok\n");
	vcpufd = ioctl(vmfd, KVM_CREATE_VCPU, 0);
	if (vcpufd < 0)
		die("KVM_CREATE_VCPU");
	dbg("KVM_CREATE_VCPU ok\n");
	run = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, vcpufd, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	if (ioctl(vmfd, KVM_ARM_PREFERRED_TARGET, &init))
		die("KVM_ARM_PREFERRED_TARGET");
	init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
	if (ioctl(vcpufd, KVM_ARM_VCPU_INIT, &init))
		die("KVM_ARM_VCPU_INIT");
	dbg("KVM_ARM_VCPU_INIT ok\n");
	reg.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE |
		 (offsetof(struct kvm_regs, regs.pc) / sizeof(__u32));
	reg.addr = (uintptr_t)&pc;
	if (ioctl(vcpufd, KVM_SET_ONE_REG, &reg))
		die("KVM_SET_ONE_REG(pc)");
	dbg("KVM_SET_ONE_REG(pc) ok\n");
}

/*
 * Runs the guest: it reads page 1 (both pages are donated then) and powers
 * off, which leaves its pages the guest's until the VM fd is closed.
 */
static void run_guest(const char *name)
{
	long ret;

	dbg("KVM_RUN...\n");
	ret = ioctl(vcpufd, KVM_RUN, 0);
	dbg("KVM_RUN = %ld\n", ret);
	if (ret == 0 && run->exit_reason == KVM_EXIT_SYSTEM_EVENT)
		printf("probe %s: guest powered off (KVM_EXIT_SYSTEM_EVENT type %u)\n",
		       name, run->system_event.type);
	else if (ret < 0 && run->exit_reason == KVM_EXIT_MEMORY_FAULT)
		printf("probe %s: %s, KVM_EXIT_MEMORY_FAULT gpa=%#llx\n", name,
		       err(ret), (unsigned long long)run->memory_fault.gpa);
	else
		printf("probe %s: %s, exit %u\n", name, err(ret),
		       run->exit_reason);
	if (verbose)
		system("cat /sys/kernel/debug/cloister/vm-*-pages >&2");
}

static const char *content(const char *buf)
{
	static const char zero[sizeof(secret)];

	if (!memcmp(buf, secret, sizeof(secret)))
		return "the secret";
	if (!memcmp(buf, zero, sizeof(secret)))
		return "zeroes";
	return "something else";
}

/* process_vm_readv() and process_vm_writev() of our own donated page. */
static void probe_process_vm(uint8_t *page)
{
	char buf[64] = { 0 };
	struct iovec local = { buf, sizeof(buf) };
	struct iovec remote = { page, sizeof(buf) };
	long ret;

	ret = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
	printf("probe process_vm_readv: %s\n", err(ret));
	ret = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
	printf("probe process_vm_writev: %s\n", err(ret));
}

/* /proc/self/mem: access_remote_vm(). */
static void probe_proc_mem(uint8_t *page)
{
	char buf[64] = { 0 };
	long ret;
	int fd;

	fd = open("/proc/self/mem", O_RDWR);
	if (fd < 0)
		die("/proc/self/mem");
	ret = pread(fd, buf, sizeof(buf), (uintptr_t)page);
	printf("probe proc_mem_read: %s\n", err(ret));
	ret = pwrite(fd, buf, sizeof(buf), (uintptr_t)page);
	printf("probe proc_mem_write: %s\n", err(ret));
	close(fd);
}

/* vmsplice() takes the pages with get_user_pages_fast(). */
static void probe_vmsplice(uint8_t *page)
{
	struct iovec remote = { page, 64 };
	int p[2];
	long ret;

	if (pipe(p))
		die("pipe");
	ret = vmsplice(p[1], &remote, 1, 0);
	printf("probe vmsplice: %s\n", err(ret));
	close(p[0]);
	close(p[1]);
}

/* PTRACE_PEEKDATA and PTRACE_POKEDATA from a child attached to us. */
static void probe_ptrace(uint8_t *page)
{
	pid_t parent = getpid(), child;
	int status;
	long word;

	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		if (ptrace(PTRACE_SEIZE, parent, 0, 0) ||
		    ptrace(PTRACE_INTERRUPT, parent, 0, 0)) {
			printf("probe ptrace: attach: %s\n", strerror(errno));
			_exit(1);
		}
		waitpid(parent, &status, __WALL);
		errno = 0;
		word = ptrace(PTRACE_PEEKDATA, parent, page, 0);
		printf("probe ptrace_peekdata: %s\n",
		       errno ? err(-1) :
		       word == *(const long *)secret ? "the secret" : "a word");
		printf("probe ptrace_pokedata: %s\n",
		       err(ptrace(PTRACE_POKEDATA, parent, page, 0)));
		ptrace(PTRACE_DETACH, parent, 0, 0);
		_exit(0);
	}
	waitpid(child, &status, 0);
}

/* fork() with the guest memory inherited (MADV_DOFORK): copy_present_page(). */
static void probe_fork(uint8_t *page)
{
	int status;
	pid_t child;

	if (madvise(mem, RAM_SIZE, MADV_DOFORK))
		die("MADV_DOFORK");
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		printf("probe fork_dofork: the child sees %s\n",
		       content((char *)page));
		_exit(0);
	}
	waitpid(child, &status, 0);
	printf("probe fork_dofork_parent: alive\n");
}

static const struct {
	const char *name;
	void (*probe)(uint8_t *page);
} gup_probes[] = {
	{ "process_vm", probe_process_vm },
	{ "proc_mem", probe_proc_mem },
	{ "vmsplice", probe_vmsplice },
	{ "ptrace", probe_ptrace },
	{ "fork", probe_fork },
};

/* All the GUP probes, or only the one called @only. */
static void probe_gup(const char *only)
{
	size_t i;

	setup(0);
	run_guest("gup_run");
	for (i = 0; i < sizeof(gup_probes) / sizeof(gup_probes[0]); i++)
		if (!only || !strcmp(only, gup_probes[i].name))
			gup_probes[i].probe(mem + PAGE);
}

static void probe_pipe(void)
{
	struct iovec remote;
	char buf[64];
	int p[2];
	long ret;

	setup(0);
	remote.iov_base = mem + PAGE;
	remote.iov_len = PAGE;
	if (pipe(p))
		die("pipe");
	/* The pipe holds a reference to the page, taken before donation. */
	ret = vmsplice(p[1], &remote, 1, 0);
	printf("probe pipe_vmsplice: %s\n", err(ret));
	run_guest("pipe_run");
	ret = read(p[0], buf, sizeof(buf));
	printf("probe pipe_read: %s, %s\n", err(ret),
	       ret > 0 ? content(buf) : "-");
	close(p[0]);
	close(p[1]);
}

/* After teardown the pages are the host's again: GUP takes them. */
static void probe_teardown(void)
{
	char buf[64];
	struct iovec local = { buf, sizeof(buf) };
	struct iovec remote;
	long ret;

	setup(0);
	run_guest("teardown_run");
	munmap(run, PAGE);
	close(vcpufd);
	close(vmfd);
	remote.iov_base = mem + PAGE;
	remote.iov_len = sizeof(buf);
	ret = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
	printf("probe teardown_process_vm_readv: %s, %s\n", err(ret),
	       ret > 0 ? content(buf) : "-");
}

static long read_at(uint8_t *va, size_t len)
{
	static char buf[4 * PAGE];
	struct iovec local = { buf, len };
	struct iovec remote = { va, len };

	return process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
}

static long splice_at(uint8_t *va, size_t len)
{
	struct iovec remote = { va, len };
	int p[2];
	long ret;

	if (pipe(p))
		die("pipe");
	ret = vmsplice(p[1], &remote, 1, 0);
	close(p[0]);
	close(p[1]);
	return ret;
}

/* Guest memory in one THP: donated and host pages in the same folio. */
static void probe_thp(void)
{
	char line[256];
	FILE *f;

	setup(2);
	f = fopen("/proc/self/smaps", "r");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "AnonHugePages:", 14) && !strstr(line, " 0 kB"))
			printf("probe thp_smaps: %s", line);
	if (f)
		fclose(f);
	run_guest("thp_run");
	printf("probe thp_readv_page1: %s\n", err(read_at(mem + PAGE, 64)));
	printf("probe thp_readv_page5: %s\n", err(read_at(mem + 5 * PAGE, 64)));
	printf("probe thp_readv_pages2to5: %s\n",
	       err(read_at(mem + 2 * PAGE, 4 * PAGE)));
	printf("probe thp_readv_pages1to2: %s\n",
	       err(read_at(mem + PAGE, 2 * PAGE)));
	printf("probe thp_vmsplice_page1: %s\n", err(splice_at(mem + PAGE, 64)));
	printf("probe thp_vmsplice_page5: %s\n",
	       err(splice_at(mem + 5 * PAGE, 64)));
	printf("probe thp_vmsplice_pages0to7: %s\n",
	       err(splice_at(mem, 8 * PAGE)));
}

static void probe_memfd(void)
{
	char buf[64];
	long ret;

	setup(1);
	run_guest("memfd_run");
	ret = pread(memfd, buf, sizeof(buf), PAGE);
	printf("probe memfd_read: %s, %s\n", err(ret),
	       ret > 0 ? content(buf) : "-");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	verbose = !!getenv("PVMPROBE_DEBUG");
	if (argc < 2)
		return 2;
	if (!strcmp(argv[1], "gup"))
		probe_gup(argc > 2 ? argv[2] : NULL);
	else if (!strcmp(argv[1], "pipe"))
		probe_pipe();
	else if (!strcmp(argv[1], "thp"))
		probe_thp();
	else if (!strcmp(argv[1], "teardown"))
		probe_teardown();
	else if (!strcmp(argv[1], "memfd"))
		probe_memfd();
	else
		return 2;
	printf("probe %s: done\n", argv[1]);
	return 0;
}
