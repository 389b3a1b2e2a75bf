//! SELinux labels (the `security.selinux` extended attribute) of test files.
#![allow(dead_code)]

use std::path::Path;

/// The `security.selinux` attribute of `path` itself, if it has one.
pub fn selinux_label(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt as _;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated names; `buf` is valid for its length.
    let n = unsafe {
        libc::lgetxattr(
            name.as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Sets the `security.selinux` attribute of `path` itself (root only
/// where no SELinux runs: the kernel then keeps the value as given).
pub fn set_selinux_label(path: &Path, label: &[u8]) {
    use std::os::unix::ffi::OsStrExt as _;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated names; `label` is valid for its length.
    let rc = unsafe {
        libc::lsetxattr(
            name.as_ptr(),
            c"security.selinux".as_ptr(),
            label.as_ptr().cast(),
            label.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "{}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}
