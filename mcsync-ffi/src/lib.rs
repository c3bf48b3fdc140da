//! C ABI over mcsync-core.
