//! OS isolation for untrusted subprocesses (lion's second sandbox): a
//! program started in new user, mount, pid, ipc, uts and network
//! namespaces, with the filesystem denied by default (Landlock), a seccomp
//! allow-list kept as data, and limits that hold whether lion runs as root
//! or not. Where a needed feature is missing it refuses to start, naming it.
