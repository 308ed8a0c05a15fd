"""The original's script blocklist, as an optional policy (SCRIPT_BLOCKLIST, on by default).

A sanity check, not a sandbox: only run.sh is read, and anything it calls is not. Isolation comes from how the
client is deployed (a dedicated user, a private network, containers). The rules are the original's, with its
known false positives fixed: comment lines are not read; `rm` is refused only on an absolute or home path (not
`rm out/tmp.txt`, not `confirm /x`); `su` and `service` only as commands (not `# this service is...` or a word
ending in "su"); `at` only when followed by a time; `$TOKEN` not in `$TOKENIZER`; `chmod` only when it sets
setuid or setgid bits (not `chmod 644`).
"""

from pathlib import Path

import re2

MAX_SCRIPT_SIZE = 20 * 1024 * 1024
# Where a command starts: a line, or after ; & | ( ` $(. Blanks only: `\s` would run across newlines, and
# a script of many blank lines would take quadratic time.
COMMAND = r"(?:^|[;&|(`]|\$\()[ \t]*"

RULES = [
    ("destructive rm command", rf"{COMMAND}rm[ \t]+(?:-[a-zA-Z-]+[ \t]+)*[\"']?(?:/|~)"),
    ("filesystem format command", r"\bmkfs\b"),
    ("direct device write", r"\bdd\s+.*of=/dev"),
    ("disk-filling dd command", r"\bdd\s+.*if=/dev/(?:zero|urandom)"),
    ("access to /etc/passwd", r"/etc/passwd"),
    ("access to /etc/shadow", r"/etc/shadow"),
    ("access to /etc/sudoers", r"/etc/sudoers"),
    ("access to /proc", r"/proc/"),
    ("access to /sys", r"/sys/"),
    ("access to SSH keys", r"~/\.ssh/"),
    ("access to root home", r"/root/"),
    ("access to Docker socket", r"/var/run/docker\.sock"),
    *(
        (f"network tool: {tool}", rf"\b{tool}\b")
        for tool in ("curl", "wget", "nc", "ncat", "socat", "ssh", "scp", "sftp", "telnet", "rsync")
    ),
    ("reverse shell via /dev/tcp", r"/dev/tcp/"),
    ("reverse shell via /dev/udp", r"/dev/udp/"),
    ("privilege escalation: sudo", r"\bsudo\b"),
    ("privilege escalation: su", rf"{COMMAND}su(?:[ \t]|$)"),
    ("dangerous chmod", r"\bchmod\s+(?:-\S+\s+)*(?:[2-7][0-7]{3}\b|[ugoa]*\+[rwxt]*s)"),
    ("ownership change: chown", r"\bchown\b"),
    ("container escape: chroot", r"\bchroot\b"),
    ("container escape: nsenter", r"\bnsenter\b"),
    ("container escape: unshare", r"\bunshare\b"),
    ("filesystem manipulation: mount", r"\bmount\b"),
    ("filesystem manipulation: umount", r"\bumount\b"),
    ("container escape: docker", r"\bdocker\b"),
    ("container escape: kubectl", r"\bkubectl\b"),
    ("kernel manipulation: sysctl", r"\bsysctl\b"),
    ("kernel module: modprobe", r"\bmodprobe\b"),
    ("kernel module: insmod", r"\binsmod\b"),
    ("kernel module: rmmod", r"\brmmod\b"),
    ("firewall manipulation: iptables", r"\biptables\b"),
    ("firewall manipulation: nftables", r"\bnftables\b"),
    ("obfuscated execution: base64 pipe to shell", r"base64.*\|\s*(?:bash|sh)\b"),
    ("dynamic code execution: eval", r"\beval\s+"),
    ("inline interpreter: python", r"\bpython[23]?\s+-c\b"),
    ("inline interpreter: perl", r"\bperl\s+-e\b"),
    ("inline interpreter: ruby", r"\bruby\s+-e\b"),
    ("persistence: crontab", r"\bcrontab\b"),
    ("persistence: cron directory", r"/etc/cron"),
    ("persistence: systemctl", r"\bsystemctl\b"),
    ("persistence: service command", rf"{COMMAND}service[ \t]+\S+[ \t]+(?:start|stop|restart|reload|enable|disable)\b"),
    (
        "persistence: at scheduler",
        rf"{COMMAND}at[ \t]+(?:-[a-zA-Z]|now\b|noon\b|midnight\b|teatime\b|tomorrow\b|[0-9])",
    ),
    ("fork bomb", r":\(\)\s*\{.*:\|:"),
    ("resource exhaustion: stress", r"\bstress\b"),
    ("resource exhaustion: stress-ng", r"\bstress-ng\b"),
    ("crypto mining: xmrig", r"\bxmrig\b"),
    ("crypto mining: minerd", r"\bminerd\b"),
    ("crypto mining: cpuminer", r"\bcpuminer\b"),
    ("environment secret: AWS", r"\$\{?AWS_"),
    ("environment secret: SECRET", r"\$\{?SECRET"),
    ("environment secret: TOKEN", r"\$\{?TOKEN\b"),
    ("environment secret: PASSWORD", r"\$\{?PASSWORD"),
    ("environment secret: API_KEY", r"\$\{?API_KEY"),
]
# RE2 matches in linear time, as the original's Rust regex does; Python's backtracking `re` can take
# quadratic time or worse on a long crafted line.
COMPILED = [(label, re2.compile(f"(?m){pattern}")) for label, pattern in RULES]
COMMENT_LINE = re2.compile(r"(?m)^[ \t]*#.*$")


def check_file(path: Path) -> str | None:
    """Why the blocklist refuses the run.sh at `path`, or None (blocking: up to a second for a big script)."""
    if path.stat().st_size > MAX_SCRIPT_SIZE:
        return "Unsafe script detected: script too large"
    return unsafe_reason(path.read_bytes())


def unsafe_reason(script: bytes) -> str | None:
    """Why the blocklist refuses this run.sh (the original's wording), or None if it does not."""
    if len(script) > MAX_SCRIPT_SIZE:
        return "Unsafe script detected: script too large"
    try:
        text = script.decode()
    except UnicodeDecodeError:
        return "Unsafe script detected: script is not valid UTF-8"
    text = COMMENT_LINE.sub("", text)
    for label, pattern in COMPILED:
        if pattern.search(text):
            return f"Unsafe script detected: {label}"
    return None
