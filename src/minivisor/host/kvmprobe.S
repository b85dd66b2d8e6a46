# kvmprobe.S: the accelerator probe guest (one 512-byte BIOS boot sector).
#
# minivisor boots this under `-accel kvm` to find out whether KVM really works.
# It runs as the VM's firmware: kvmprobe_reset.S copies it to 0x7c00 and jumps
# here, with no SeaBIOS before it (a broken KVM can hang inside SeaBIOS, silently).
# /dev/kvm can exist and open fine while 64-bit guests are unusable, so the
# only trustworthy test is a guest that gets into long mode AND does real work
# there at hardware speed.  On one host we met, KVM entered long mode but then
# ran guest code ~4000x slower than native (Linux "hung" decompressing itself);
# a probe that stopped at "reached long mode" passed there.  Hence the
# workload below: it takes milliseconds under a working KVM, ~0.1 s under
# TCG, and tens of seconds under such a broken KVM, so the host's timeout
# catches it.  The same image must succeed under `-accel tcg`: that is how we
# know a failure under KVM is KVM's fault and not the probe's.
#
# Contract with src/minivisor/host/accel.py (keep the two in step):
#   * progress bytes on COM1 (0x3f8): 'R' real mode, 'P' protected mode,
#     'L' long mode (EFER.LMA checked), 'M' memory check passed,
#     'C' compute workload done and correct; then the marker "LM64OK\r\n".
#     accel.py kills the probe when a stage brings no byte within PROBE_STALL.
#   * isa-debug-exit (iobase 0xf4) code -> QEMU exit status (code<<1)|1:
#       0x31 -> 99  success
#       0x32 -> 101 in 64-bit code but EFER.LMA is clear
#       0x33 -> 103 memory read back differs from what was written
#       0x34 -> 105 the 64-bit computation gave a wrong result
#   * a triple fault (with -no-reboot) makes QEMU exit with status 0.
#
# Build (host.py embeds the result; the runtime never needs binutils):
#   as --32 -o kvmprobe.o kvmprobe.S
#   ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o kvmprobe.bin kvmprobe.o
# tests/unit/test_host.py reassembles this file and compares the bytes.
#
# Memory (the VM is started with -m 16): 0x1000-0x3fff page tables, the stack
# below 0x7c00, this sector at 0x7c00, and 1 MiB-15 MiB for the memory check.

        .set    PML4,       0x1000      # page-map level 4 (one entry used)
        .set    PDPT,       0x2000      # page-directory-pointer table
        .set    PD,         0x3000      # page directory: 8 x 2 MiB = 16 MiB
        .set    SERIAL,     0x3f8       # COM1 data register (THR)
        .set    EXIT_PORT,  0xf4        # isa-debug-exit iobase
        .set    EXIT_OK,    0x31
        .set    EXIT_NOLMA, 0x32
        .set    EXIT_MEM,   0x33
        .set    EXIT_CALC,  0x34
        .set    MSR_EFER,   0xc0000080
        .set    MEM_START,  0x100000    # memory check: 1 MiB ...
        .set    MEM_END,    0xf00000    # ... to 15 MiB, one qword per 4 KiB page
        .set    ROUNDS,     0x400000    # xorshift64 rounds (2^22)
        .set    CODE32,     0x08        # GDT selectors (see gdt below)
        .set    DATA,       0x10
        .set    CODE64,     0x18

        .text
        .code16
        .globl  _start
_start:
        # --- Real mode.  The firmware stub jumps here with CS:IP = 0000:7c00
        # (a BIOS might use 07c0:0000); no interrupt handler is set up.
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        ljmp    $0, $real               # normalise CS to 0 so labels are offsets
real:
        movw    $SERIAL, %dx
        movb    $'R', %al
        outb    %al, %dx
        # Open the A20 gate with the "fast A20" port (bit 1 of 0x92; never set
        # bit 0, that resets the machine): the memory check crosses 1 MiB.
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        # --- Enter 32-bit protected mode: load the GDT, set CR0.PE, then a far
        # jump to reload CS with a 32-bit code descriptor.
        lgdt    gdt_desc
        movl    %cr0, %eax
        orl     $0x1, %eax              # CR0.PE
        movl    %eax, %cr0
        ljmp    $CODE32, $prot

        .code32
prot:
        movw    $DATA, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $0x7c00, %esp
        movw    $SERIAL, %dx
        movb    $'P', %al
        outb    %al, %dx

        # --- Build identity-mapped page tables: PML4[0] -> PDPT[0] -> PD, and
        # PD[0..7] map virtual 0-16 MiB onto physical 0-16 MiB as 2 MiB pages.
        movl    $PML4, %edi
        xorl    %eax, %eax
        movl    $(3 * 4096 / 4), %ecx   # zero the three 4 KiB tables
        cld
        rep stosl
        movl    $(PDPT | 0x3), PML4     # present | writable
        movl    $(PD | 0x3), PDPT       # present | writable
        movl    $PD, %edi
        movl    $0x83, %eax             # present | writable | PS (2 MiB page)
        movl    $8, %ecx
map:
        movl    %eax, (%edi)
        addl    $0x200000, %eax
        addl    $8, %edi
        loop    map

        # --- Enable long mode, in the order the architecture requires:
        # CR4.PAE, CR3 = PML4, EFER.LME, and finally CR0.PG (which activates
        # long mode and sets EFER.LMA).
        movl    %cr4, %eax
        orl     $0x20, %eax             # CR4.PAE
        movl    %eax, %cr4
        movl    $PML4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $0x100, %eax            # EFER.LME
        wrmsr
        movl    %cr0, %eax
        orl     $0x80000000, %eax       # CR0.PG
        movl    %eax, %cr0
        # We are in compatibility mode now; a far jump to a descriptor with
        # L=1 puts us in 64-bit mode proper.
        ljmp    $CODE64, $long

        .code64
long:
        # --- 64-bit mode.  First check EFER.LMA, the CPU's own statement that
        # long mode is active, so a broken accelerator cannot pass by accident.
        movl    $MSR_EFER, %ecx
        rdmsr
        movb    $EXIT_NOLMA, %bl
        btl     $10, %eax               # EFER.LMA
        jnc     exit
        movw    $SERIAL, %dx
        movb    $'L', %al
        outb    %al, %dx

        # --- Memory check: write each page's own address into it, then read
        # all of them back.  Exercises the accelerator's mapping of guest RAM
        # above 1 MiB through our page tables.
        movl    $MEM_START, %edi
fill:
        movq    %rdi, (%rdi)
        addq    $4096, %rdi
        cmpq    $MEM_END, %rdi
        jb      fill
        movl    $MEM_START, %edi
        movb    $EXIT_MEM, %bl
check:
        cmpq    %rdi, (%rdi)
        jne     exit
        addq    $4096, %rdi
        cmpq    $MEM_END, %rdi
        jb      check
        movb    $'M', %al
        outb    %al, %dx

        # --- Compute workload: ROUNDS rounds of xorshift64 (x ^= x<<13;
        # x ^= x>>7; x ^= x<<17) from a fixed seed.  This is what measures
        # speed: a few ms on hardware, ~0.1 s under TCG.  The result is checked
        # (the constant was computed on the host with the same recurrence), so
        # the loop cannot be skipped or mis-executed unnoticed.
        movabsq $0x9e3779b97f4a7c15, %rax
        movl    $ROUNDS, %ecx
xorshift:
        movq    %rax, %rsi
        shlq    $13, %rsi
        xorq    %rsi, %rax
        movq    %rax, %rsi
        shrq    $7, %rsi
        xorq    %rsi, %rax
        movq    %rax, %rsi
        shlq    $17, %rsi
        xorq    %rsi, %rax
        decl    %ecx
        jnz     xorshift
        movabsq $0x30ec4a71583e0b4c, %rsi   # xorshift64^(2^22)(seed)
        movb    $EXIT_CALC, %bl
        cmpq    %rsi, %rax
        jne     exit
        movb    $'C', %al
        outb    %al, %dx

        # Print the marker.  It comes from one 64-bit immediate shifted out a
        # byte at a time: decoded as 32-bit code these bytes would do something
        # else entirely, so seeing the marker proves we ran as 64-bit code.
        movabsq $0x0a0d4b4f34364d4c, %rax   # "LM64OK\r\n", little-endian
        movl    $8, %ecx
print:
        outb    %al, %dx
        shrq    $8, %rax
        loop    print
        movb    $EXIT_OK, %bl
exit:
        movb    %bl, %al
        outb    %al, $EXIT_PORT         # isa-debug-exit ends QEMU here
halt:
        hlt                             # only reached without isa-debug-exit
        jmp     halt

        # --- The GDT: null, 32-bit code, data, 64-bit code (L=1, D=0).
        # Flat 4 GiB segments; in long mode base and limit are ignored.
        .p2align 3
gdt:
        .quad   0x0000000000000000
        .quad   0x00cf9a000000ffff      # 0x08: code, 32-bit, ring 0
        .quad   0x00cf92000000ffff      # 0x10: data, writable, ring 0
        .quad   0x00af9a000000ffff      # 0x18: code, 64-bit (L=1), ring 0
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1       # limit
        .long   gdt                     # linear base

        # --- Boot signature: the BIOS only boots a sector ending in 55 aa.
        .org    510
        .word   0xaa55
