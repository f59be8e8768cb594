//! What starting a child process needs, shared by the gateway (`gateway`) and the Kafka
//! broker (`kafka`) this tool spawns: a free loopback port for it, and its death with this
//! tool. Depends on no other module of the tool.

use tokio::process::Command;

/// Makes the kernel kill `cmd`'s process when this tool dies in any way (even SIGKILL), so
/// no benchmark gateway or broker is ever left behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A free loopback port (bound then released; a race with another process is unlikely).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
