//! aya-log records for the tc and XDP programs, written into aya-log's ring (`AYA_LOGS`)
//! one field at a time, in the format `aya_log_ebpf`'s macros use (and `aya-log` reads).
//!
//! The macros build every field of a record on the stack before copying them to the
//! ring; `fk_xdp` and `fk_tc_ingress` are within a few bytes of the 512-byte stack limit,
//! so they cannot take that. Here each field goes straight to the reserved record, so a
//! record costs a few bytes of stack at most.

use aya_log_ebpf::macro_support::{
    AYA_LOGS, Argument, DisplayHint, Field, Header, Level, LogValueLength,
};

/// Bytes reserved per record (the longest record here is about 240 bytes; a record
/// that does not fit is discarded).
const CAPACITY: usize = 320;

/// Writes one info record from `file:line` with the values `args` appends.
#[inline(always)]
pub(crate) fn info(
    file: &'static str,
    line: u32,
    args: impl FnOnce(&mut Writer<'_>) -> Option<()>,
) {
    let Some(mut buf) = AYA_LOGS.reserve_bytes(CAPACITY, 0) else {
        return;
    };
    let written = (|| {
        let mut writer = Writer {
            buf: &mut buf,
            pos: size_of::<LogValueLength>(),
            values: 0,
        };
        let target = module_path!();
        // The header ends with the number of values, known once they are written.
        Header::new(target, Level::Info, target, file, line, 0)?
            .with_bytes(&mut |bytes| writer.put(bytes))?;
        let num_args_at = writer.pos - size_of::<u32>();
        args(&mut writer)?;
        let (size, values) = (writer.pos, writer.values);
        let size = LogValueLength::try_from(size).ok()?;
        buf.get_mut(..size_of::<LogValueLength>())?
            .copy_from_slice(&size.to_ne_bytes());
        buf.get_mut(num_args_at..)?
            .get_mut(..size_of::<u32>())?
            .copy_from_slice(&values.to_ne_bytes());
        Some(())
    })();
    match written {
        Some(()) => buf.submit(0),
        None => buf.discard(0),
    }
}

/// Appends fields to a reserved record.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    /// Values written (the record's "arguments": texts, display hints, parameters).
    values: u32,
}

impl Writer<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let to = self.buf.get_mut(self.pos..)?.get_mut(..bytes.len())?;
        to.copy_from_slice(bytes);
        self.pos += bytes.len();
        Some(())
    }

    #[inline(always)]
    fn field<A: Argument>(&mut self, value: A) -> Option<()> {
        let (kind, bytes) = value.as_argument();
        Field::new(kind, bytes)?.with_bytes(&mut |bytes| self.put(bytes))?;
        self.values += 1;
        Some(())
    }

    /// A literal text (one value).
    #[inline(always)]
    pub(crate) fn text(&mut self, text: &'static str) -> Option<()> {
        self.field(text)
    }

    /// An IPv4 address in network byte order, shown dotted (two values).
    #[inline(always)]
    pub(crate) fn ip(&mut self, addr: u32) -> Option<()> {
        self.field(DisplayHint::Ip)?;
        self.field(u32::from_be(addr))
    }

    /// A port in network byte order (two values).
    #[inline(always)]
    pub(crate) fn port(&mut self, port: u16) -> Option<()> {
        self.field(DisplayHint::Default)?;
        self.field(u16::from_be(port))
    }

    /// A number (two values).
    #[inline(always)]
    pub(crate) fn num(&mut self, n: u32) -> Option<()> {
        self.field(DisplayHint::Default)?;
        self.field(n)
    }
}
