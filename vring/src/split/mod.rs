//! Split virtqueues (virtqueue spec §2).
//!
//! A split ring is three areas: the descriptor table, the available ring
//! (driver → device) and the used ring (device → driver). [`DeviceQueue`] is
//! the device's side (a vhost-user back-end), [`DriverQueue`] the driver's (a
//! front-end driving a back-end without a guest, tests, benches).
//!
//! | file | what |
//! |---|---|
//! | `layout.rs` | offsets and sizes, translation of the three areas |
//! | `descriptors.rs` | [`AvailChain`] and the validating chain walk [`Descriptors`] |
//! | `device.rs` | [`DeviceQueue`] |
//! | `driver.rs` | [`DriverQueue`] |

mod descriptors;
mod device;
mod driver;
pub mod layout;

pub use descriptors::{AvailChain, Descriptors};
pub use device::DeviceQueue;
pub use driver::DriverQueue;

#[cfg(test)]
mod tests;
