//! virtio-net pieces (virtqueue spec §9) and DPDK testpmd output parsing, for the real-peer
//! tests against DPDK's `net_virtio_user` and `net_vhost`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Peer;

/// The virtio-net header with VERSION_1 (or MRG_RXBUF): 12 bytes, `num_buffers` last.
pub const HDR_LEN: usize = 12;
/// VIRTIO_NET_F_MRG_RXBUF (bit 15).
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// VIRTIO_NET_HDR_GSO_NONE.
pub const GSO_NONE: u8 = 0;
/// EtherType of the frames the tests generate (IEEE local experimental 1).
pub const ETHERTYPE: u16 = 0x88b5;

/// A 12-byte `virtio_net_hdr`: no checksum offload, no GSO, `num_buffers` as given.
pub fn header(num_buffers: u16) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

/// The parts of a received `virtio_net_hdr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetHdr {
    /// `flags` (NEEDS_CSUM = 1, DATA_VALID = 2).
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
    /// `hdr_len`.
    pub hdr_len: u16,
    /// `gso_size`.
    pub gso_size: u16,
    /// `num_buffers`.
    pub num_buffers: u16,
}

/// Parses the first 12 bytes of `b`.
pub fn parse_header(b: &[u8]) -> Option<NetHdr> {
    let b = b.get(..HDR_LEN)?;
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    Some(NetHdr {
        flags: b[0],
        gso_type: b[1],
        hdr_len: u16_at(2),
        gso_size: u16_at(4),
        num_buffers: u16_at(10),
    })
}

/// An Ethernet frame of `len` bytes (at least 22): broadcast destination, a locally
/// administered source, [`ETHERTYPE`], then `seq` (le64) and a pattern derived from it.
pub fn frame(seq: u64, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    let mut i = 0u64;
    while f.len() < len {
        f.push((seq.wrapping_mul(31).wrapping_add(i)) as u8);
        i += 1;
    }
    f.truncate(len);
    f
}

/// Packet counters of one testpmd statistics block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `RX-packets`.
    pub rx_packets: u64,
    /// `RX-dropped` (forward statistics) or `RX-missed` (port statistics).
    pub rx_dropped: u64,
    /// `TX-packets`.
    pub tx_packets: u64,
    /// `TX-dropped` (forward statistics) or `TX-errors` (port statistics).
    pub tx_dropped: u64,
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(name)? + name.len();
    line.get(at..)?
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn block_after(output: &str, marker: &str) -> Option<Counters> {
    let at = output.rfind(marker)?;
    let mut c = Counters::default();
    let mut seen = (false, false);
    for line in output.get(at..)?.lines().skip(1).take(4) {
        if let Some(v) = field(line, "RX-packets:") {
            c.rx_packets = v;
            c.rx_dropped = field(line, "RX-dropped:")
                .or_else(|| field(line, "RX-missed:"))
                .unwrap_or(0);
            seen.0 = true;
        }
        if let Some(v) = field(line, "TX-packets:") {
            c.tx_packets = v;
            c.tx_dropped = field(line, "TX-dropped:")
                .or_else(|| field(line, "TX-errors:"))
                .unwrap_or(0);
            seen.1 = true;
        }
    }
    (seen.0 && seen.1).then_some(c)
}

/// The final forward statistics testpmd prints when it stops (on SIGINT): the last
/// `Accumulated forward statistics for all ports` block.
pub fn final_forward_stats(output: &str) -> Option<Counters> {
    block_after(output, "Accumulated forward statistics for all ports")
}

/// The latest periodic port statistics (`--stats-period`): the last
/// `NIC statistics for port` block.
pub fn latest_port_stats(output: &str) -> Option<Counters> {
    block_after(output, "NIC statistics for port")
}

/// testpmd on cores 0 and 1 (`main_lcore` the one that is not forwarding), without
/// hugepages or PCI devices, with one virtual device (`vdev`, after the EAL arguments
/// `eal_extra`) and forwarding in `mode` from the start; periodic port statistics every
/// second (for [`latest_port_stats`]).
pub fn testpmd(
    bin: &Path,
    prefix: &str,
    main_lcore: &str,
    eal_extra: &[&str],
    vdev: &str,
    mode: &str,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["-l", "0,1", "--main-lcore", main_lcore])
        .args(["--no-huge", "-m", "256", "--no-pci"])
        .args(eal_extra)
        .arg(format!("--file-prefix={prefix}"))
        .args(["--vdev", vdev, "--"])
        .args(["--auto-start", &format!("--forward-mode={mode}")])
        .args([
            "--stats-period",
            "1",
            "--nb-cores=1",
            "--total-num-mbufs=16384",
        ]);
    cmd
}

/// Stops testpmd with SIGINT and returns its final forward statistics; panics unless it
/// exits cleanly and prints them.
pub fn stop_testpmd(peer: &mut Peer) -> Counters {
    let (status, clean) = match peer.interrupt(Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => panic!("interrupting testpmd: {e}"),
    };
    let out = peer.output();
    assert!(
        clean && status.success(),
        "testpmd did not exit cleanly on SIGINT ({status}):\n{out}"
    );
    final_forward_stats(&out)
        .unwrap_or_else(|| panic!("no final statistics in testpmd's output:\n{out}"))
}

/// A DPDK `--file-prefix` unique to this process and tag, and the runtime directory DPDK
/// makes for it (`/var/run/dpdk/<prefix>` as root, else under `$XDG_RUNTIME_DIR`), which is
/// outside the test's temp dir: removed when the guard drops (declare it before the testpmd
/// [`Peer`]s, so that they are gone first).
#[derive(Debug)]
pub struct DpdkPrefix {
    prefix: String,
    dir: PathBuf,
}

impl DpdkPrefix {
    /// `vt<tag><pid>`.
    pub fn new(tag: &str) -> Self {
        let prefix = format!("vt{tag}{}", std::process::id());
        let base = if rustix::process::geteuid().is_root() {
            PathBuf::from("/var/run/dpdk")
        } else {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
                .join("dpdk")
        };
        let dir = base.join(&prefix);
        DpdkPrefix { prefix, dir }
    }

    /// The `--file-prefix` value.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for DpdkPrefix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_final_block() {
        let out = "\
  ######################## NIC statistics for port 0  ########################
  RX-packets: 5          RX-missed: 0          RX-bytes:  320
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 7          TX-errors: 0          TX-bytes:  448

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 11             RX-dropped: 0             RX-total: 11
  TX-packets: 1234           TX-dropped: 99            TX-total: 1333
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++
";
        assert_eq!(
            final_forward_stats(out),
            Some(Counters {
                rx_packets: 11,
                rx_dropped: 0,
                tx_packets: 1234,
                tx_dropped: 99
            })
        );
        assert_eq!(latest_port_stats(out).map(|c| c.rx_packets), Some(5));
    }

    #[test]
    fn frames_and_headers() {
        let f = frame(7, 64);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[12..14], &ETHERTYPE.to_be_bytes());
        let h = parse_header(&header(1)).unwrap();
        assert_eq!((h.flags, h.gso_type, h.num_buffers), (0, GSO_NONE, 1));
    }
}
