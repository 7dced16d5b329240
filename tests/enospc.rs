//! A full disk under the store: the write that does not fit fails with ENOSPC, nothing
//! already stored is lost, and the store mounts and verifies clean afterwards
//! (house rule 5: a full disk gets a precise error and loses nothing).

use crate::harness::util::{self, Mounted};
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// A small tmpfs mounted at `dir` for the data dir; unmounted on drop.
struct SmallDisk<'a>(&'a Path);

impl<'a> SmallDisk<'a> {
    fn mount(dir: &'a Path, size: &str) -> SmallDisk<'a> {
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                // A data dir is private (issue 13); tmpfs's root is 1777 otherwise.
                &format!("size={size},mode=0700"),
                "twinfs-test-enospc",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mounting a tmpfs at {} failed", dir.display());
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
}

#[test]
fn full_disk_returns_enospc_and_loses_nothing() {
    if !util::require_fuse("full_disk_returns_enospc_and_loses_nothing") {
        return;
    }
    let tmp = util::tempdir("enospc");
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let _disk = SmallDisk::mount(&data, "48m");
    let m = Mounted::start_at(&data, &mnt, &[]);

    // Files that were fsynced before the disk filled up.
    let mut kept = Vec::new();
    for i in 0..8 {
        let p = mnt.join(format!("kept-{i}"));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&content(i, 256 * 1024)).unwrap();
        f.sync_all().unwrap();
        kept.push((p, content(i, 256 * 1024)));
    }

    // Fill the disk: bounded by count (48 MiB cannot take 200 MiB).
    let mut saw_enospc = false;
    let mut f = std::fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![0xabu8; 1 << 20];
    for _ in 0..200 {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "expected ENOSPC, got {e}"
                );
                saw_enospc = true;
                break;
            }
        }
    }
    assert!(saw_enospc, "a 48 MiB disk took 200 MiB without ENOSPC");
    drop(f);
    let log = m.stderr_so_far();
    assert!(
        log.contains("no space left"),
        "the daemon should log the full disk; stderr:\n{log}"
    );

    // Everything fsynced before is intact, and deleting the filler frees space again.
    for (p, want) in &kept {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            want,
            "{} changed after ENOSPC",
            p.display()
        );
    }
    std::fs::remove_file(mnt.join("filler")).unwrap();
    // The cleaner gives the filler's space back after a checkpoint (5 s by default):
    // a new 4 MiB file must fit again. Bounded: 30 tries, one per second.
    let mut fits = false;
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let p = mnt.join("after");
        let r = std::fs::File::create(&p).and_then(|mut f| {
            f.write_all(&content(99, 4 << 20))?;
            f.sync_all()
        });
        if r.is_ok() {
            fits = true;
            break;
        }
    }
    assert!(
        fits,
        "space was not reclaimed after deleting the filler; stderr:\n{}",
        m.stderr_so_far()
    );
    kept.push((mnt.join("after"), content(99, 4 << 20)));
    let stderr = m.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");

    let m = Mounted::start_at(&data, &mnt, &[]);
    for (p, want) in &kept {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            want,
            "{} lost across remount",
            p.display()
        );
    }
    m.stop();
    let out = util::run_twinfs(&["verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "verify after ENOSPC: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
