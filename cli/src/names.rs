//! Number <-> name tables for x86-64 Linux syscalls and errno values.
//!
//! Sources (Linux v6.18):
//! - syscalls: `arch/x86/entry/syscalls/syscall_64.tbl`, `common` and `64` ABI
//!   entries only. The x32-only entries (512..=547) are left out, so they
//!   return `None`.
//! - errno: `include/uapi/asm-generic/errno-base.h` and `errno.h` (1..=133), plus
//!   the kernel-internal codes from `include/linux/errno.h` (512..=531). A
//!   syscall's return value can show these internal codes, even though user
//!   space never sees them in `errno`.
//!
//! The newest syscall in v6.18 is `file_setattr` (469). `listns` (470) first
//! appears in v6.19 and is not included.

/// `(number, name)` for every x86-64 syscall, sorted by number.
#[rustfmt::skip]
const SYSCALLS: &[(i64, &str)] = &[
    (0, "read"), (1, "write"), (2, "open"), (3, "close"), (4, "stat"), (5, "fstat"), (6, "lstat"),
    (7, "poll"), (8, "lseek"), (9, "mmap"), (10, "mprotect"), (11, "munmap"), (12, "brk"),
    (13, "rt_sigaction"), (14, "rt_sigprocmask"), (15, "rt_sigreturn"), (16, "ioctl"),
    (17, "pread64"), (18, "pwrite64"), (19, "readv"), (20, "writev"), (21, "access"), (22, "pipe"),
    (23, "select"), (24, "sched_yield"), (25, "mremap"), (26, "msync"), (27, "mincore"),
    (28, "madvise"), (29, "shmget"), (30, "shmat"), (31, "shmctl"), (32, "dup"), (33, "dup2"),
    (34, "pause"), (35, "nanosleep"), (36, "getitimer"), (37, "alarm"), (38, "setitimer"),
    (39, "getpid"), (40, "sendfile"), (41, "socket"), (42, "connect"), (43, "accept"),
    (44, "sendto"), (45, "recvfrom"), (46, "sendmsg"), (47, "recvmsg"), (48, "shutdown"),
    (49, "bind"), (50, "listen"), (51, "getsockname"), (52, "getpeername"), (53, "socketpair"),
    (54, "setsockopt"), (55, "getsockopt"), (56, "clone"), (57, "fork"), (58, "vfork"),
    (59, "execve"), (60, "exit"), (61, "wait4"), (62, "kill"), (63, "uname"), (64, "semget"),
    (65, "semop"), (66, "semctl"), (67, "shmdt"), (68, "msgget"), (69, "msgsnd"), (70, "msgrcv"),
    (71, "msgctl"), (72, "fcntl"), (73, "flock"), (74, "fsync"), (75, "fdatasync"),
    (76, "truncate"), (77, "ftruncate"), (78, "getdents"), (79, "getcwd"), (80, "chdir"),
    (81, "fchdir"), (82, "rename"), (83, "mkdir"), (84, "rmdir"), (85, "creat"), (86, "link"),
    (87, "unlink"), (88, "symlink"), (89, "readlink"), (90, "chmod"), (91, "fchmod"), (92, "chown"),
    (93, "fchown"), (94, "lchown"), (95, "umask"), (96, "gettimeofday"), (97, "getrlimit"),
    (98, "getrusage"), (99, "sysinfo"), (100, "times"), (101, "ptrace"), (102, "getuid"),
    (103, "syslog"), (104, "getgid"), (105, "setuid"), (106, "setgid"), (107, "geteuid"),
    (108, "getegid"), (109, "setpgid"), (110, "getppid"), (111, "getpgrp"), (112, "setsid"),
    (113, "setreuid"), (114, "setregid"), (115, "getgroups"), (116, "setgroups"),
    (117, "setresuid"), (118, "getresuid"), (119, "setresgid"), (120, "getresgid"),
    (121, "getpgid"), (122, "setfsuid"), (123, "setfsgid"), (124, "getsid"), (125, "capget"),
    (126, "capset"), (127, "rt_sigpending"), (128, "rt_sigtimedwait"), (129, "rt_sigqueueinfo"),
    (130, "rt_sigsuspend"), (131, "sigaltstack"), (132, "utime"), (133, "mknod"), (134, "uselib"),
    (135, "personality"), (136, "ustat"), (137, "statfs"), (138, "fstatfs"), (139, "sysfs"),
    (140, "getpriority"), (141, "setpriority"), (142, "sched_setparam"), (143, "sched_getparam"),
    (144, "sched_setscheduler"), (145, "sched_getscheduler"), (146, "sched_get_priority_max"),
    (147, "sched_get_priority_min"), (148, "sched_rr_get_interval"), (149, "mlock"),
    (150, "munlock"), (151, "mlockall"), (152, "munlockall"), (153, "vhangup"), (154, "modify_ldt"),
    (155, "pivot_root"), (156, "_sysctl"), (157, "prctl"), (158, "arch_prctl"), (159, "adjtimex"),
    (160, "setrlimit"), (161, "chroot"), (162, "sync"), (163, "acct"), (164, "settimeofday"),
    (165, "mount"), (166, "umount2"), (167, "swapon"), (168, "swapoff"), (169, "reboot"),
    (170, "sethostname"), (171, "setdomainname"), (172, "iopl"), (173, "ioperm"),
    (174, "create_module"), (175, "init_module"), (176, "delete_module"), (177, "get_kernel_syms"),
    (178, "query_module"), (179, "quotactl"), (180, "nfsservctl"), (181, "getpmsg"),
    (182, "putpmsg"), (183, "afs_syscall"), (184, "tuxcall"), (185, "security"), (186, "gettid"),
    (187, "readahead"), (188, "setxattr"), (189, "lsetxattr"), (190, "fsetxattr"),
    (191, "getxattr"), (192, "lgetxattr"), (193, "fgetxattr"), (194, "listxattr"),
    (195, "llistxattr"), (196, "flistxattr"), (197, "removexattr"), (198, "lremovexattr"),
    (199, "fremovexattr"), (200, "tkill"), (201, "time"), (202, "futex"),
    (203, "sched_setaffinity"), (204, "sched_getaffinity"), (205, "set_thread_area"),
    (206, "io_setup"), (207, "io_destroy"), (208, "io_getevents"), (209, "io_submit"),
    (210, "io_cancel"), (211, "get_thread_area"), (212, "lookup_dcookie"), (213, "epoll_create"),
    (214, "epoll_ctl_old"), (215, "epoll_wait_old"), (216, "remap_file_pages"), (217, "getdents64"),
    (218, "set_tid_address"), (219, "restart_syscall"), (220, "semtimedop"), (221, "fadvise64"),
    (222, "timer_create"), (223, "timer_settime"), (224, "timer_gettime"),
    (225, "timer_getoverrun"), (226, "timer_delete"), (227, "clock_settime"),
    (228, "clock_gettime"), (229, "clock_getres"), (230, "clock_nanosleep"), (231, "exit_group"),
    (232, "epoll_wait"), (233, "epoll_ctl"), (234, "tgkill"), (235, "utimes"), (236, "vserver"),
    (237, "mbind"), (238, "set_mempolicy"), (239, "get_mempolicy"), (240, "mq_open"),
    (241, "mq_unlink"), (242, "mq_timedsend"), (243, "mq_timedreceive"), (244, "mq_notify"),
    (245, "mq_getsetattr"), (246, "kexec_load"), (247, "waitid"), (248, "add_key"),
    (249, "request_key"), (250, "keyctl"), (251, "ioprio_set"), (252, "ioprio_get"),
    (253, "inotify_init"), (254, "inotify_add_watch"), (255, "inotify_rm_watch"),
    (256, "migrate_pages"), (257, "openat"), (258, "mkdirat"), (259, "mknodat"), (260, "fchownat"),
    (261, "futimesat"), (262, "newfstatat"), (263, "unlinkat"), (264, "renameat"), (265, "linkat"),
    (266, "symlinkat"), (267, "readlinkat"), (268, "fchmodat"), (269, "faccessat"),
    (270, "pselect6"), (271, "ppoll"), (272, "unshare"), (273, "set_robust_list"),
    (274, "get_robust_list"), (275, "splice"), (276, "tee"), (277, "sync_file_range"),
    (278, "vmsplice"), (279, "move_pages"), (280, "utimensat"), (281, "epoll_pwait"),
    (282, "signalfd"), (283, "timerfd_create"), (284, "eventfd"), (285, "fallocate"),
    (286, "timerfd_settime"), (287, "timerfd_gettime"), (288, "accept4"), (289, "signalfd4"),
    (290, "eventfd2"), (291, "epoll_create1"), (292, "dup3"), (293, "pipe2"),
    (294, "inotify_init1"), (295, "preadv"), (296, "pwritev"), (297, "rt_tgsigqueueinfo"),
    (298, "perf_event_open"), (299, "recvmmsg"), (300, "fanotify_init"), (301, "fanotify_mark"),
    (302, "prlimit64"), (303, "name_to_handle_at"), (304, "open_by_handle_at"),
    (305, "clock_adjtime"), (306, "syncfs"), (307, "sendmmsg"), (308, "setns"), (309, "getcpu"),
    (310, "process_vm_readv"), (311, "process_vm_writev"), (312, "kcmp"), (313, "finit_module"),
    (314, "sched_setattr"), (315, "sched_getattr"), (316, "renameat2"), (317, "seccomp"),
    (318, "getrandom"), (319, "memfd_create"), (320, "kexec_file_load"), (321, "bpf"),
    (322, "execveat"), (323, "userfaultfd"), (324, "membarrier"), (325, "mlock2"),
    (326, "copy_file_range"), (327, "preadv2"), (328, "pwritev2"), (329, "pkey_mprotect"),
    (330, "pkey_alloc"), (331, "pkey_free"), (332, "statx"), (333, "io_pgetevents"), (334, "rseq"),
    (335, "uretprobe"), (336, "uprobe"),
    (424, "pidfd_send_signal"), (425, "io_uring_setup"), (426, "io_uring_enter"),
    (427, "io_uring_register"), (428, "open_tree"), (429, "move_mount"), (430, "fsopen"),
    (431, "fsconfig"), (432, "fsmount"), (433, "fspick"), (434, "pidfd_open"), (435, "clone3"),
    (436, "close_range"), (437, "openat2"), (438, "pidfd_getfd"), (439, "faccessat2"),
    (440, "process_madvise"), (441, "epoll_pwait2"), (442, "mount_setattr"), (443, "quotactl_fd"),
    (444, "landlock_create_ruleset"), (445, "landlock_add_rule"), (446, "landlock_restrict_self"),
    (447, "memfd_secret"), (448, "process_mrelease"), (449, "futex_waitv"),
    (450, "set_mempolicy_home_node"), (451, "cachestat"), (452, "fchmodat2"),
    (453, "map_shadow_stack"), (454, "futex_wake"), (455, "futex_wait"), (456, "futex_requeue"),
    (457, "statmount"), (458, "listmount"), (459, "lsm_get_self_attr"), (460, "lsm_set_self_attr"),
    (461, "lsm_list_modules"), (462, "mseal"), (463, "setxattrat"), (464, "getxattrat"),
    (465, "listxattrat"), (466, "removexattrat"), (467, "open_tree_attr"), (468, "file_getattr"),
    (469, "file_setattr"),
];

/// One past the highest syscall number in [`SYSCALLS`].
const SYSCALL_TABLE_LEN: usize = 470;

/// Syscall names indexed by number; unused numbers are `None`.
static SYSCALL_TABLE: [Option<&str>; SYSCALL_TABLE_LEN] = build_table();

const fn build_table() -> [Option<&'static str>; SYSCALL_TABLE_LEN] {
    let mut table = [None; SYSCALL_TABLE_LEN];
    let mut i = 0;
    while i < SYSCALLS.len() {
        let (nr, name) = SYSCALLS[i];
        // A duplicate or out-of-order number fails the build.
        assert!(i == 0 || SYSCALLS[i - 1].0 < nr, "SYSCALLS must be strictly sorted");
        table[nr as usize] = Some(name);
        i += 1;
    }
    table
}

/// Returns the name of x86-64 syscall `nr` (e.g. `257` -> `"openat"`), or
/// `None` if the number is unused, negative, or x32-only.
#[must_use]
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    usize::try_from(nr).ok().and_then(|i| SYSCALL_TABLE.get(i).copied().flatten())
}

/// Returns the x86-64 number of the syscall called exactly `name`
/// (e.g. `"openat"` -> `257`), or `None` if there is no such syscall.
#[must_use]
pub fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS.iter().find(|&&(_, n)| n == name).map(|&(nr, _)| nr)
}

/// Returns the symbolic name of a positive errno value (e.g. `2` -> `"ENOENT"`).
///
/// Pass the negated syscall return value (`-ret`). Aliases map to the canonical
/// name (`EWOULDBLOCK` -> `"EAGAIN"`, `EDEADLOCK` -> `"EDEADLK"`). The result
/// also covers the kernel-internal codes 512..=531 (e.g. `"ERESTARTSYS"`).
/// Unknown, zero, or negative values return `None`.
#[must_use]
#[rustfmt::skip]
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM", 2 => "ENOENT", 3 => "ESRCH", 4 => "EINTR", 5 => "EIO", 6 => "ENXIO",
        7 => "E2BIG", 8 => "ENOEXEC", 9 => "EBADF", 10 => "ECHILD", 11 => "EAGAIN",
        12 => "ENOMEM", 13 => "EACCES", 14 => "EFAULT", 15 => "ENOTBLK", 16 => "EBUSY",
        17 => "EEXIST", 18 => "EXDEV", 19 => "ENODEV", 20 => "ENOTDIR", 21 => "EISDIR",
        22 => "EINVAL", 23 => "ENFILE", 24 => "EMFILE", 25 => "ENOTTY", 26 => "ETXTBSY",
        27 => "EFBIG", 28 => "ENOSPC", 29 => "ESPIPE", 30 => "EROFS", 31 => "EMLINK",
        32 => "EPIPE", 33 => "EDOM", 34 => "ERANGE", 35 => "EDEADLK", 36 => "ENAMETOOLONG",
        37 => "ENOLCK", 38 => "ENOSYS", 39 => "ENOTEMPTY", 40 => "ELOOP",
        // 41 is unused (EWOULDBLOCK == EAGAIN).
        42 => "ENOMSG", 43 => "EIDRM", 44 => "ECHRNG", 45 => "EL2NSYNC", 46 => "EL3HLT",
        47 => "EL3RST", 48 => "ELNRNG", 49 => "EUNATCH", 50 => "ENOCSI", 51 => "EL2HLT",
        52 => "EBADE", 53 => "EBADR", 54 => "EXFULL", 55 => "ENOANO", 56 => "EBADRQC",
        57 => "EBADSLT",
        // 58 is unused (EDEADLOCK == EDEADLK).
        59 => "EBFONT", 60 => "ENOSTR", 61 => "ENODATA", 62 => "ETIME", 63 => "ENOSR",
        64 => "ENONET", 65 => "ENOPKG", 66 => "EREMOTE", 67 => "ENOLINK", 68 => "EADV",
        69 => "ESRMNT", 70 => "ECOMM", 71 => "EPROTO", 72 => "EMULTIHOP", 73 => "EDOTDOT",
        74 => "EBADMSG", 75 => "EOVERFLOW", 76 => "ENOTUNIQ", 77 => "EBADFD", 78 => "EREMCHG",
        79 => "ELIBACC", 80 => "ELIBBAD", 81 => "ELIBSCN", 82 => "ELIBMAX", 83 => "ELIBEXEC",
        84 => "EILSEQ", 85 => "ERESTART", 86 => "ESTRPIPE", 87 => "EUSERS", 88 => "ENOTSOCK",
        89 => "EDESTADDRREQ", 90 => "EMSGSIZE", 91 => "EPROTOTYPE", 92 => "ENOPROTOOPT",
        93 => "EPROTONOSUPPORT", 94 => "ESOCKTNOSUPPORT", 95 => "EOPNOTSUPP",
        96 => "EPFNOSUPPORT", 97 => "EAFNOSUPPORT", 98 => "EADDRINUSE", 99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN", 101 => "ENETUNREACH", 102 => "ENETRESET", 103 => "ECONNABORTED",
        104 => "ECONNRESET", 105 => "ENOBUFS", 106 => "EISCONN", 107 => "ENOTCONN",
        108 => "ESHUTDOWN", 109 => "ETOOMANYREFS", 110 => "ETIMEDOUT", 111 => "ECONNREFUSED",
        112 => "EHOSTDOWN", 113 => "EHOSTUNREACH", 114 => "EALREADY", 115 => "EINPROGRESS",
        116 => "ESTALE", 117 => "EUCLEAN", 118 => "ENOTNAM", 119 => "ENAVAIL", 120 => "EISNAM",
        121 => "EREMOTEIO", 122 => "EDQUOT", 123 => "ENOMEDIUM", 124 => "EMEDIUMTYPE",
        125 => "ECANCELED", 126 => "ENOKEY", 127 => "EKEYEXPIRED", 128 => "EKEYREVOKED",
        129 => "EKEYREJECTED", 130 => "EOWNERDEAD", 131 => "ENOTRECOVERABLE", 132 => "ERFKILL",
        133 => "EHWPOISON",
        // Kernel-internal (include/linux/errno.h); 520 is unused.
        512 => "ERESTARTSYS", 513 => "ERESTARTNOINTR", 514 => "ERESTARTNOHAND",
        515 => "ENOIOCTLCMD", 516 => "ERESTART_RESTARTBLOCK", 517 => "EPROBE_DEFER",
        518 => "EOPENSTALE", 519 => "ENOPARAM", 521 => "EBADHANDLE", 522 => "ENOTSYNC",
        523 => "EBADCOOKIE", 524 => "ENOTSUPP", 525 => "ETOOSMALL", 526 => "ESERVERFAULT",
        527 => "EBADTYPE", 528 => "EJUKEBOX", 529 => "EIOCBQUEUED", 530 => "ERECALLCONFLICT",
        531 => "ENOGRACE",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    #[rustfmt::skip]
    fn known_syscalls() {
        let expected: &[(i64, &str)] = &[
            (0, "read"), (1, "write"), (2, "open"), (3, "close"), (9, "mmap"),
            (13, "rt_sigaction"), (16, "ioctl"), (56, "clone"), (59, "execve"), (60, "exit"),
            (101, "ptrace"), (134, "uselib"), (156, "_sysctl"), (185, "security"),
            (202, "futex"), (217, "getdents64"), (231, "exit_group"), (257, "openat"),
            (262, "newfstatat"), (321, "bpf"), (322, "execveat"), (334, "rseq"),
            (335, "uretprobe"), (336, "uprobe"), (424, "pidfd_send_signal"),
            (425, "io_uring_setup"), (435, "clone3"), (437, "openat2"), (443, "quotactl_fd"),
            (450, "set_mempolicy_home_node"), (451, "cachestat"), (453, "map_shadow_stack"),
            (457, "statmount"), (461, "lsm_list_modules"), (462, "mseal"), (463, "setxattrat"),
            (464, "getxattrat"), (465, "listxattrat"), (466, "removexattrat"),
            (467, "open_tree_attr"), (468, "file_getattr"), (469, "file_setattr"),
        ];
        for &(nr, name) in expected {
            assert_eq!(syscall_name(nr), Some(name), "nr {nr}");
            assert_eq!(syscall_number(name), Some(nr), "name {name}");
        }
        assert_eq!(SYSCALLS.len(), 383);
        assert_eq!(SYSCALLS.last(), Some(&(469, "file_setattr")));
    }

    #[test]
    fn gaps_and_out_of_range() {
        for nr in (337..=423).chain(470..=600).chain([-1, i64::MIN, i64::MAX]) {
            assert_eq!(syscall_name(nr), None, "nr {nr}");
        }
        // x32-only entries (512..=547) are excluded.
        assert_eq!(syscall_number("compat_sys_execve"), None);
        assert_eq!(syscall_number(""), None);
        assert_eq!(syscall_number("OPENAT"), None);
        assert_eq!(syscall_number("listns"), None);
    }

    #[test]
    fn round_trip_and_unique() {
        let mut names = HashSet::new();
        let mut prev = -1;
        for &(nr, name) in SYSCALLS {
            assert!(nr > prev, "not sorted at {nr}");
            prev = nr;
            assert!(names.insert(name), "duplicate name {name}");
            assert_eq!(syscall_name(nr), Some(name));
            assert_eq!(syscall_number(name), Some(nr));
        }
        let populated = (0..SYSCALL_TABLE_LEN as i64).filter(|&nr| syscall_name(nr).is_some());
        assert_eq!(populated.count(), names.len());
    }

    /// Checks the table against the installed uapi header, if there is one. The
    /// header may be older than v6.18, so it only has to be a subset.
    #[test]
    fn matches_installed_unistd_64_h() {
        let Ok(text) = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") else {
            return;
        };
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some("#define"), Some(sym), Some(val)) = (it.next(), it.next(), it.next()) {
                if let (Some(name), Ok(nr)) = (sym.strip_prefix("__NR_"), val.parse::<i64>()) {
                    assert_eq!(syscall_name(nr), Some(name), "unistd_64.h: {line}");
                }
            }
        }
    }

    #[test]
    #[rustfmt::skip]
    fn errnos() {
        let expected: &[(i32, &str)] = &[
            (1, "EPERM"), (2, "ENOENT"), (4, "EINTR"), (11, "EAGAIN"), (13, "EACCES"),
            (22, "EINVAL"), (35, "EDEADLK"), (38, "ENOSYS"), (95, "EOPNOTSUPP"),
            (110, "ETIMEDOUT"), (125, "ECANCELED"), (133, "EHWPOISON"), (512, "ERESTARTSYS"),
            (516, "ERESTART_RESTARTBLOCK"), (517, "EPROBE_DEFER"), (519, "ENOPARAM"),
            (521, "EBADHANDLE"), (524, "ENOTSUPP"), (531, "ENOGRACE"),
        ];
        for &(e, name) in expected {
            assert_eq!(errno_name(e), Some(name), "errno {e}");
        }
        for e in [0, -2, 41, 58, 134, 511, 520, 532, 4095, i32::MIN] {
            assert_eq!(errno_name(e), None, "errno {e}");
        }
        let all: Vec<_> = (0..=600).filter_map(errno_name).collect();
        assert_eq!(all.len(), 131 + 19);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
    }
}
