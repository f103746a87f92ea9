//! Typed reads and writes of fixed-layout headers (zerocopy structs, little-endian
//! fields) from and to a chain.

use vring::DescriptorIter;
use vring::memory::GuestMemory;
use vring::{Error, Reader, Writer};
use zerocopy::{FromBytes, IntoBytes};

/// Reads a whole header from a chain's readable part.
///
/// ```
/// # use vhost_backend::ReadObj;
/// # fn f(reader: &mut vhost_backend::ChainReader<'_>) -> Result<(), vring::Error> {
/// // virtio-blk: type, reserved, sector.
/// #[derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::KnownLayout, zerocopy::Immutable)]
/// #[repr(C)]
/// struct Header { kind: zerocopy::little_endian::U32, reserved: u32, sector: zerocopy::little_endian::U64 }
/// let h: Header = reader.read_obj()?;
/// let sector = h.sector.get();
/// # let _ = sector; Ok(()) }
/// ```
pub trait ReadObj {
    /// Reads `size_of::<T>()` bytes into a `T`; [`Error::NoRoom`] if the readable part is
    /// shorter (the bytes that were there are consumed).
    fn read_obj<T: FromBytes + IntoBytes>(&mut self) -> Result<T, Error>;
}

/// Writes a whole header into a chain's writable part.
pub trait WriteObj {
    /// Writes the bytes of `value`; [`Error::NoRoom`] if the writable part is shorter
    /// (what fit was written).
    fn write_obj<T: IntoBytes + zerocopy::Immutable>(&mut self, value: &T) -> Result<(), Error>;
}

impl<M: GuestMemory + ?Sized, I: DescriptorIter> ReadObj for Reader<'_, M, I> {
    fn read_obj<T: FromBytes + IntoBytes>(&mut self) -> Result<T, Error> {
        let mut v = T::new_zeroed();
        self.read_exact(v.as_mut_bytes())?;
        Ok(v)
    }
}

impl<M: GuestMemory + ?Sized, I: DescriptorIter> WriteObj for Writer<'_, M, I> {
    fn write_obj<T: IntoBytes + zerocopy::Immutable>(&mut self, value: &T) -> Result<(), Error> {
        self.write_all(value.as_bytes())
    }
}
