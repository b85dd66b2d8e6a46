# kvmprobe_reset.S: the probe's firmware (the last 256 bytes of a 64 KiB -bios image).
#
# The probe runs as the VM's firmware, not as a boot sector behind SeaBIOS: the CPU
# leaves reset at F000:FFF0 (the "reset" jump below), this copies the 512-byte probe
# (kvmprobe.S, at the image's start: physical 0xF0000) to 0000:7C00 and jumps there,
# as a BIOS would. Without SeaBIOS the probe's first progress byte comes as soon as
# QEMU runs the guest, so a stall can be told apart from a slow start (host/accel.py),
# and a broken KVM, which hangs inside SeaBIOS, shows how far it got.
#
# Build (host/accel.py embeds the result):
#   as --32 -o kvmprobe_reset.o kvmprobe_reset.S
#   ld -m elf_i386 -Ttext 0xff00 --oformat binary -o kvmprobe_reset.bin kvmprobe_reset.o
# tests/unit/test_host.py reassembles this file and compares the bytes.

        .code16
        .text
        .globl  _start
_start:
        cli
        cld
        xorw    %ax, %ax
        movw    %ax, %es
        movw    $0x7c00, %di
        movw    $0xf000, %ax
        movw    %ax, %ds
        xorw    %si, %si
        movw    $256, %cx
        rep movsw
        ljmp    $0, $0x7c00
        .org    0xf0
reset:
        ljmp    $0xf000, $0xff00
        .org    0x100
