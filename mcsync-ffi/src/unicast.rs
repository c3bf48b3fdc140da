//! Unicast-only subscribers: the subscriber's switch and the publisher's bound on how
//! many it pushes to (see docs/PROTOCOL.md, "Unicast-only subscribers").

use crate::args::borrow_mut;
use crate::config::{mcsync_publisher_config, mcsync_subscriber_config};
use crate::error::mcsync_status;
use mcsync_core::config::limits;

/// Sets whether the subscriber is unicast-only: it does not join multicast groups; the
/// publisher pushes the same sealed datagrams by unicast UDP to a socket the subscriber
/// binds on the local address of its control connection. For networks that carry no
/// multicast (clouds, WAN links). Default false. If the publisher refuses push (it has
/// as many unicast subscribers as it allows), the subscription catches up by polling,
/// and the statistics counter "unicast_refused" shows it. `config` is borrowed for the
/// call only; not thread-safe (set a config up on one thread).
#[no_mangle]
pub unsafe extern "C" fn mcsync_subscriber_config_set_unicast(
    config: *mut mcsync_subscriber_config,
    unicast: bool,
) -> mcsync_status {
    ffi_panic_boundary! {
        borrow_mut(config, "config")?.config.unicast = unicast;
        Ok(())
    }
}

/// Sets the most unicast-only subscribers each database's stream is pushed to
/// (0..=4096; 0 refuses push to everyone). Past it a unicast-only subscriber still
/// registers, and catches up by polling. Default 32. `config` is borrowed for the call
/// only; not thread-safe.
#[no_mangle]
pub unsafe extern "C" fn mcsync_publisher_config_set_max_unicast_targets(
    config: *mut mcsync_publisher_config,
    targets: usize,
) -> mcsync_status {
    ffi_panic_boundary! {
        let c = borrow_mut(config, "config")?;
        c.config.multicast.max_unicast_targets = limits::MAX_UNICAST_TARGETS.check(targets)?;
        Ok(())
    }
}
