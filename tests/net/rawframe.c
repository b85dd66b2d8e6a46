/* A guest-side tool of tests/net/test_antispoof.py: sends the Ethernet frame it reads on stdin out of eth0
 * exactly as written (AF_PACKET, SOCK_RAW: source MAC, ARP sender and DHCP chaddr are the test's), and exits 0
 * once the kernel took it. No libc (the test guest has busybox only): raw x86-64 system calls. */

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

enum { SYS_READ = 0, SYS_IOCTL = 16, SYS_SOCKET = 41, SYS_SENDTO = 44, SYS_EXIT = 60 };
enum { AF_PACKET = 17, SOCK_RAW = 3, SIOCGIFINDEX = 0x8933 };

static unsigned char frame[1600];
static struct { char name[16]; int index; char pad[20]; } ifr = { "eth0" };
static struct { unsigned short family, protocol; int ifindex; unsigned short hatype;
		unsigned char pkttype, halen, addr[8]; } to;

void _start(void)
{
	long size = 0, got, fd, ok;
	while ((got = sys6(SYS_READ, 0, (long)(frame + size), (long)sizeof frame - size, 0, 0, 0)) > 0)
		size += got;
	fd = sys6(SYS_SOCKET, AF_PACKET, SOCK_RAW, 0, 0, 0, 0); /* protocol 0: it sends, it receives nothing */
	ok = fd >= 0 && size >= 14 && sys6(SYS_IOCTL, fd, SIOCGIFINDEX, (long)&ifr, 0, 0, 0) == 0;
	to.family = AF_PACKET;
	to.ifindex = ifr.index;
	to.halen = 6;
	ok = ok && sys6(SYS_SENDTO, fd, (long)frame, size, 0, (long)&to, sizeof to) == size;
	sys6(SYS_EXIT, !ok, 0, 0, 0, 0, 0);
	for (;;)
		;
}
