//! The guest kernel: Debian's cloud kernel, unpacked from its package, with the uncompressed ELF
//! `vmlinux` pulled out of the bzImage.
//!
//! QEMU's microvm and Firecracker boot an ELF kernel through its PVH entry point; Debian only
//! ships the bzImage. The bzImage's setup header says exactly where the compressed kernel is
//! (`payload_offset`/`payload_length`), and Debian compresses it with LZ4 (legacy frame), which
//! is decoded here in Rust so the builder needs no extra tool. gzip is handled too; xz and zstd
//! (other kernel builds) go through their command-line tools.

use crate::error::{AgentError, AgentResult};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

const ELF_MAGIC: &[u8] = b"\x7fELF";
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Legacy LZ4 frames use 8 MiB blocks; anything larger is corrupt input.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct KernelTree {
    /// `uname -r`, from the `boot/vmlinuz-<release>` file name.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

impl KernelTree {
    /// Finds the kernel in a `dpkg -x` tree.
    pub fn find(root: &Path) -> AgentResult<Self> {
        let boot = root.join("boot");
        let entries = std::fs::read_dir(&boot).map_err(|e| AgentError::io(&boot, e))?;
        let mut releases: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_string)
            })
            .collect();
        releases.sort();
        let release = releases.pop().ok_or_else(|| {
            AgentError::Image(format!(
                "no boot/vmlinuz-* in {}; is this a linux-image package?",
                root.display()
            ))
        })?;
        let mut modules_dir = root.join("lib/modules").join(&release);
        if !modules_dir.is_dir() {
            modules_dir = root.join("usr/lib/modules").join(&release);
        }
        Ok(KernelTree {
            vmlinuz: boot.join(format!("vmlinuz-{release}")),
            config: boot.join(format!("config-{release}")),
            modules_dir,
            release,
        })
    }

    /// Every module file under `kernel/`, by module name (`-` normalised to `_`, as modprobe does).
    pub fn module_index(&self) -> AgentResult<BTreeMap<String, PathBuf>> {
        let mut index = BTreeMap::new();
        let mut stack = vec![self.modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| AgentError::io(&dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| AgentError::io(&dir, e))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| AgentError::io(&path, e))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(name) = entry.file_name().to_str()
                    && let Some(stem) = module_stem(name)
                {
                    index.insert(stem.replace('-', "_"), path);
                }
            }
        }
        Ok(index)
    }

    /// Modules compiled into the kernel (`modules.builtin`), which need no loading.
    pub fn builtin_modules(&self) -> Vec<String> {
        std::fs::read_to_string(self.modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next().and_then(module_stem))
            .map(|s| s.replace('-', "_"))
            .collect()
    }
}

/// `virtio_net` from `virtio_net.ko`, `virtio_net.ko.xz` or `virtio_net.ko.zst`.
fn module_stem(file: &str) -> Option<&str> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
}

/// Reads a module file, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` (the initramfs `insmod` of
/// busybox only takes plain ELF).
pub async fn read_module(path: &Path) -> AgentResult<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    let data = match tool {
        None => std::fs::read(path).map_err(|e| AgentError::io(path, e))?,
        Some(tool) => {
            let out = tokio::process::Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .await
                .map_err(|e| AgentError::io(path, e))?;
            if !out.status.success() {
                return Err(AgentError::command(
                    format!("{tool} -dc {}", path.display()),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            out.stdout
        }
    };
    if !data.starts_with(ELF_MAGIC) {
        return Err(AgentError::Image(format!(
            "{} is not an ELF kernel module",
            path.display()
        )));
    }
    Ok(data)
}

/// The uncompressed ELF kernel inside a bzImage. The decompression (tens of MB) runs on a
/// blocking thread.
pub async fn extract_vmlinux(bzimage: Vec<u8>) -> AgentResult<Vec<u8>> {
    let (range, expected_len) = bzimage_payload(&bzimage)?;
    let payload = &bzimage[range.clone()];
    let in_rust =
        payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) || payload.starts_with(&[0x1f, 0x8b]);
    let elf = if in_rust {
        tokio::task::spawn_blocking(move || decompress_in_rust(&bzimage[range]))
            .await
            .map_err(|e| AgentError::Internal(format!("kernel decompression task: {e}")))??
    } else {
        decompress_with_tool(payload).await?
    };
    if !elf.starts_with(ELF_MAGIC) {
        return Err(AgentError::Image(
            "the decompressed kernel is not an ELF file".into(),
        ));
    }
    if let Some(len) = expected_len
        && len != elf.len()
    {
        return Err(AgentError::Image(format!(
            "the decompressed kernel has {} bytes, the bzImage says {len}",
            elf.len()
        )));
    }
    Ok(elf)
}

/// LZ4 (Debian's choice) and gzip payloads.
fn decompress_in_rust(payload: &[u8]) -> AgentResult<Vec<u8>> {
    if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        return lz4_legacy_decompress(payload)
            .map_err(|e| AgentError::Image(format!("the kernel's LZ4 payload is corrupt: {e}")));
    }
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(payload)
        .read_to_end(&mut out)
        .map_err(|e| AgentError::Image(format!("the kernel's gzip payload: {e}")))?;
    Ok(out)
}

/// xz and zstd payloads (other kernel builds) through their command-line tools.
async fn decompress_with_tool(payload: &[u8]) -> AgentResult<Vec<u8>> {
    match payload {
        p if p.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) => decompress_with("xz", p).await,
        p if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) => decompress_with("zstd", p).await,
        p => Err(AgentError::Image(format!(
            "unknown kernel compression (payload starts with {:02x?})",
            &p[..p.len().min(6)]
        ))),
    }
}

async fn decompress_with(tool: &str, data: &[u8]) -> AgentResult<Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(tool)
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| AgentError::Unavailable {
            what: tool.to_string(),
            hint: format!("install it to unpack this kernel ({e})"),
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| AgentError::Internal("no stdin pipe".into()))?;
    let input = data.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| AgentError::command(tool, e.to_string()))?;
    let _ = writer.await;
    // The payload may carry trailing bytes the tool complains about; the ELF check decides.
    Ok(out.stdout)
}

/// Where the compressed payload of a bzImage is and, when known, the uncompressed length.
///
/// With boot protocol 2.08+ the setup header gives the payload's offset and length; the kernel
/// build appends the uncompressed size as the payload's last 4 bytes (`size_append`). Older or odd
/// images fall back to searching the LZ4 magic.
pub fn bzimage_payload(image: &[u8]) -> AgentResult<(Range<usize>, Option<usize>)> {
    let u32_at = |off: usize| -> Option<u32> {
        image
            .get(off..off + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u16_at = |off: usize| -> Option<u16> {
        image
            .get(off..off + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let has_header = image.get(0x202..0x206) == Some(b"HdrS".as_slice());
    if has_header && u16_at(0x206).unwrap_or(0) >= 0x0208 {
        let setup_sects = match image.get(0x1f1).copied().unwrap_or(0) {
            0 => 4,
            n => n as usize,
        };
        let pm_start = (setup_sects + 1) * 512;
        if let (Some(off), Some(len)) = (u32_at(0x248), u32_at(0x24c)) {
            let start = pm_start + off as usize;
            let end = start + len as usize;
            if len >= 8 && end <= image.len() {
                let size = u32_at(end - 4).map(|s| s as usize);
                return Ok((start..end - 4, size));
            }
        }
    }
    let magic = LZ4_LEGACY_MAGIC.to_le_bytes();
    image
        .windows(4)
        .position(|w| w == magic)
        .map(|pos| (pos..image.len(), None))
        .ok_or_else(|| {
            AgentError::Image(
                "the kernel image has no readable bzImage header and no LZ4 payload".into(),
            )
        })
}

/// Decodes an LZ4 legacy frame (what `lz4 -l` and the kernel build produce): the magic, then
/// blocks of `u32` compressed length + LZ4 block. Bytes after the last complete block (the
/// kernel's appended size, or anything when the payload bounds were guessed) end the stream.
pub fn lz4_legacy_decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    if !data.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        return Err("no LZ4 legacy magic".into());
    }
    let mut out = Vec::with_capacity(data.len() * 3);
    let mut pos = 4;
    let mut blocks = 0;
    while pos + 4 <= data.len() {
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        if len == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let len = len as usize;
        let end = pos + 4 + len;
        if len == 0 || end > data.len() || len > LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16 {
            if blocks == 0 {
                return Err(format!("bad first block length {len}"));
            }
            break;
        }
        lz4_block(&data[pos + 4..end], &mut out, LZ4_LEGACY_BLOCK)?;
        blocks += 1;
        pos = end;
    }
    Ok(out)
}

/// Decodes one LZ4 block, appending at most `max` bytes to `out`. Matches may reach back into
/// earlier output (harmless for independent blocks, and required for linked ones).
fn lz4_block(input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    let start = out.len();
    let mut i = 0;
    let byte = |i: usize| -> Result<u8, String> {
        input
            .get(i)
            .copied()
            .ok_or_else(|| "truncated block".to_string())
    };
    loop {
        let token = byte(i)?;
        i += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                literals += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        let lit = input
            .get(i..i + literals)
            .ok_or_else(|| "literals run past the block".to_string())?;
        out.extend_from_slice(lit);
        i += literals;
        if i == input.len() {
            break; // the last sequence has literals only
        }
        let offset = usize::from(u16::from_le_bytes([byte(i)?, byte(i + 1)?]));
        i += 2;
        if offset == 0 || offset > out.len() {
            return Err(format!("bad match offset {offset}"));
        }
        let mut len = usize::from(token & 15);
        if len == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                len += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        len += 4;
        if out.len() - start + len > max {
            return Err("block decompresses past its maximum size".into());
        }
        let from = out.len() - offset;
        if offset >= len {
            out.extend_from_within(from..from + len);
        } else {
            // Overlapping copy: a run repeating the last `offset` bytes.
            for k in 0..len {
                let b = out[from + k];
                out.push(b);
            }
        }
    }
    if out.len() - start > max {
        return Err("block decompresses past its maximum size".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lz4_block_with_overlapping_match() {
        // "abc", then a 9-byte match at offset 3 (overlapping), then the literal "x".
        let block = [0x35, b'a', b'b', b'c', 3, 0, 0x10, b'x'];
        let mut framed = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        framed.extend_from_slice(&(block.len() as u32).to_le_bytes());
        framed.extend_from_slice(&block);
        // Trailing size bytes, as the kernel appends, are ignored.
        framed.extend_from_slice(&13u32.to_le_bytes());
        assert_eq!(lz4_legacy_decompress(&framed).unwrap(), b"abcabcabcabcx");
    }

    #[test]
    fn lz4_long_literal_and_match_lengths() {
        // 20 literals (15 + 5), then a match of 4+15+255+1 = 275 at offset 1.
        let mut block = vec![0xff, 5];
        block.extend(std::iter::repeat_n(b'z', 20));
        block.extend_from_slice(&[1, 0, 255, 1]);
        block.extend_from_slice(&[0x10, b'!']);
        let mut out = Vec::new();
        lz4_block(&block, &mut out, 1 << 20).unwrap();
        assert_eq!(out.len(), 20 + 275 + 1);
        assert!(out[..295].iter().all(|&b| b == b'z'));
        assert_eq!(out[295], b'!');
    }

    #[test]
    fn lz4_rejects_bad_offsets() {
        let mut out = Vec::new();
        assert!(lz4_block(&[0x10, b'a', 5, 0, 0x00], &mut out, 100).is_err());
        let mut out = Vec::new();
        assert!(lz4_block(&[0x50, b'a'], &mut out, 100).is_err());
    }

    /// Round trip through the real `lz4` tool when it is installed (scripts/build-image.sh
    /// installs it).
    #[test]
    fn lz4_matches_the_reference_tool() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice(format!("line {} {}\n", i % 977, i / 13).as_bytes());
        }
        std::fs::write(&input, &data).unwrap();
        let output = dir.path().join("out.lz4");
        let status = std::process::Command::new("lz4")
            .args(["-q", "-l", "-9", "-f"])
            .arg(&input)
            .arg(&output)
            .status();
        match status {
            Ok(s) if s.success() => {}
            _ => {
                eprintln!("lz4 not installed; skipping");
                return;
            }
        }
        let compressed = std::fs::read(&output).unwrap();
        assert_eq!(lz4_legacy_decompress(&compressed).unwrap(), data);
    }

    #[tokio::test]
    async fn bzimage_header_locates_payload() {
        // A fake bzImage: 1 setup sector + boot sector, header fields, then an LZ4 payload of an
        // "ELF" file with the appended size.
        let elf = b"\x7fELF rest of the kernel".to_vec();
        let mut lz = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        // One literal-only sequence: token 0xf0, then the length beyond 15.
        let mut block = vec![0xf0, (elf.len() - 15) as u8];
        block.extend_from_slice(&elf);
        lz.extend_from_slice(&(block.len() as u32).to_le_bytes());
        lz.extend_from_slice(&block);
        lz.extend_from_slice(&(elf.len() as u32).to_le_bytes());

        let mut img = vec![0u8; 1024];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(lz.len() as u32).to_le_bytes());
        img.resize(1024 + 100, 0xAA);
        img.extend_from_slice(&lz);
        img.extend_from_slice(b"trailing junk");
        assert_eq!(extract_vmlinux(img.clone()).await.unwrap(), elf);

        // A wrong recorded size is caught.
        let n = img.len() - 13 - 4;
        img[n..n + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(extract_vmlinux(img).await.is_err());
    }

    #[test]
    fn module_names() {
        assert_eq!(module_stem("virtio_net.ko"), Some("virtio_net"));
        assert_eq!(module_stem("virtio-blk.ko.xz"), Some("virtio-blk"));
        assert_eq!(module_stem("modules.order"), None);
    }
}
