"""A stand-in for qemu-system-x86_64 that plays one boot the tests choose, on any host (no /dev/kvm, no QEMU).

`install(directory)` writes the executable; point `snapbuild.local.qemu.QEMU` at it. It reads the argv the real
launcher builds (-accel, -serial file:…, -qmp unix:…), answers QMP (greeting, capabilities, query-status,
quit) and writes a serial console. What it plays is chosen per accelerator by environment variables:
FAKE_QEMU_KVM for `-accel kvm`, FAKE_QEMU_TCG for TCG (default "userspace"):

    msr-at-start   exit at once as this machine's KVM does (`failed to set MSR 0x10a`, then an abort)
    msr-in-trial   answer QMP once, then exit the same way (QEMU was up; the vCPU died)
    hung-in-grub   SeaBIOS and GRUB on the console, then nothing (a KVM guest hung in the boot loader)
    userspace      the console reaches userspace (`Run /init as init process`, then systemd's first line)
    panic-after-init  `Run /init as init process`, then a kernel panic (a flaky KVM failing a guest it started)
    no-boot-disk   SeaBIOS finds nothing to boot (the text this QEMU's SeaBIOS prints for an empty qcow2)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Verbatim from this QEMU 7.2 / SeaBIOS 1.16.2 booting an empty qcow2 with snapbuild's argv under TCG.
SEABIOS_EMPTY_DISK = ("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
                      "Booting from Hard Disk...\r\nBoot failed: not a bootable disk\r\n\n"
                      "Booting from Floppy...\r\nBoot failed: could not read the boot disk\r\n\nNo bootable device.\r\n")
GRUB_THEN_NOTHING = ("SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from Hard Disk...\r\nGRUB loading.\r\n"
                     "\x1b[0;30;47mWelcome to GRUB!\r\n   Booting `Debian GNU/Linux'\r\n"
                     "Loading Linux 6.1.0-50-cloud-amd64 ...\r\n")
USERSPACE = GRUB_THEN_NOTHING + ("[    1.20] Run /init as init process\r\n"
                                 "[    1.90] systemd[1]: Detected virtualization kvm.\r\n")
PANIC_AFTER_INIT = GRUB_THEN_NOTHING + ("[    1.20] Run /init as init process\r\n"
                                        "[    1.40] Kernel panic - not syncing: Attempted to kill init! "
                                        "exitcode=0x0000000b\r\n")
MSR_ABORT = ("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
             "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: "
             "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n")

_SCRIPT = '''
import json, os, socket, sys

argv = sys.argv[1:]
def opt(flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag][0]

kvm = opt("-accel") == "kvm"
play = os.environ.get("FAKE_QEMU_KVM" if kvm else "FAKE_QEMU_TCG", "userspace")
consoles = {"msr-at-start": "", "msr-in-trial": "", "hung-in-grub": GRUB, "userspace": USERSPACE,
            "no-boot-disk": SEABIOS, "panic-after-init": PANIC}

def abort():
    sys.stderr.write(MSR)
    sys.stderr.flush()
    os.abort()

if play == "msr-at-start":
    abort()
with open(opt("-serial").removeprefix("file:"), "w") as serial:
    serial.write(consoles[play])
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(opt("-qmp").removeprefix("unix:").split(",")[0])     # relative: the launcher sets the cwd
server.listen()
while True:
    conn, _ = server.accept()
    stream = conn.makefile("rwb")
    stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\\n')
    stream.flush()
    for line in stream:
        command = json.loads(line)["execute"]
        answer = {"status": "running", "running": True} if command == "query-status" else {}
        stream.write(json.dumps({"return": answer}).encode() + b"\\n")
        stream.flush()
        if command == "quit":
            sys.exit(0)
    conn.close()
    if play == "msr-in-trial":
        abort()
'''


def install(directory: Path) -> Path:
    """Write the fake QEMU executable into `directory`; its path."""
    path = directory / "fake-qemu-system-x86_64"
    constants = (f"GRUB = {GRUB_THEN_NOTHING!r}\nUSERSPACE = {USERSPACE!r}\nSEABIOS = {SEABIOS_EMPTY_DISK!r}\n"
                 f"MSR = {MSR_ABORT!r}\nPANIC = {PANIC_AFTER_INIT!r}\n")
    path.write_text(f"#!{sys.executable}\n{constants}{_SCRIPT}")
    path.chmod(0o755)
    return path
