//! `floor`: what the TCP writes of a fan-out cost on this machine with no gateway at all.
//!
//! One thread writes the same server WebSocket frame to each of `--clients` loopback sockets,
//! `--rate` events a second, `--per-write` events' frames in one `write` (1: one write per
//! socket per event, as a gateway that sends each event as it comes; more: the batching a
//! write-coalescing window would buy). Readers on this process's runtime read and discard.
//! `--writer tasks` writes as the gateway does instead: a task per socket on a runtime of two
//! workers, every task woken for every event.
//! The figure is the writer threads' CPU (`getrusage(RUSAGE_THREAD)`, `/proc` for the
//! workers of `tasks`) per delivered frame:
//! the system calls and the kernel's TCP work, including the reader's loopback receive path,
//! which on loopback runs in the writer's `sendto` and is charged to it — as it is to the
//! gateway in `fanout`. No user-space work of a gateway is in it: it is the floor under a
//! delivery that is one write.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FloorArgs {
    /// Sockets written to.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Events a second (each one frame to every socket).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Size of one event's frame on the wire, header included (353: a compressed ticker).
    #[arg(long, default_value_t = 353)]
    pub bytes: usize,
    /// Events whose frames go out in one write to a socket (the writes happen every
    /// per-write / rate seconds, so the deliveries a second do not change).
    #[arg(long = "per-write", default_value_t = 1)]
    pub per_write: usize,
    /// Measured seconds (after one unmeasured second).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// How the frames are written.
    #[arg(long, value_enum, default_value_t = WriterKind::Blocking)]
    pub writer: WriterKind,
}

/// The writers `floor` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriterKind {
    /// One thread, blocking sockets, a write to each socket in turn.
    Blocking,
    /// One thread with a current-thread tokio runtime: non-blocking sockets in its epoll
    /// (edge-triggered read and write interest, as every tokio socket), `try_write` to each
    /// in turn, its timer between events.
    Tokio,
    /// The gateway's shape: a task per socket on a multi-thread runtime of two workers, each
    /// task woken for every event and writing its own socket.
    Tasks,
}

#[derive(Debug, Serialize)]
pub struct FloorReport {
    pub scenario: &'static str,
    pub params: FloorArgs,
    pub writes: u64,
    pub deliveries: u64,
    pub writer_user_us_per_delivery: f64,
    pub writer_sys_us_per_delivery: f64,
    pub writer_us_per_delivery: f64,
    pub writer_us_per_write: f64,
    /// Share of a core the writer used while measured.
    pub writer_core_share: f64,
    /// Frames the readers got of those written (all of them, or the run is void).
    pub delivered_share: f64,
    /// How far behind its schedule a round started at worst, ms: above the period between
    /// rounds, the writer could not keep the rate asked for.
    pub late_ms: f64,
}

/// When the writes happen: every `period` (per-write / rate), `warm` unmeasured rounds (one
/// second's worth) and then `rounds` measured ones (the duration's worth).
struct Schedule {
    period: Duration,
    warm: u64,
    rounds: u64,
}

impl Schedule {
    fn of(args: &FloorArgs) -> Self {
        let period = Duration::from_secs_f64(args.per_write as f64 / args.rate);
        Self {
            period,
            warm: (1.0 / period.as_secs_f64()).ceil() as u64,
            rounds: (args.duration / period.as_secs_f64()).round().max(1.0) as u64,
        }
    }
}

/// The rounds as they go: when each is due, how late the latest one started, and the mark
/// where the measured rounds begin. The three writers share it.
struct Pace {
    schedule: Schedule,
    start: Instant,
    late: Duration,
}

impl Pace {
    fn new(args: &FloorArgs) -> Self {
        Self {
            schedule: Schedule::of(args),
            start: Instant::now(),
            late: Duration::ZERO,
        }
    }

    /// Every round, warm-up first.
    fn rounds(&self) -> std::ops::Range<u64> {
        0..self.schedule.warm + self.schedule.rounds
    }

    /// Round `round` starts now: notes how late; true for the first measured round.
    fn starting(&mut self, round: u64) -> bool {
        let due = self.schedule.period * round as u32;
        self.late = self.late.max(self.start.elapsed().saturating_sub(due));
        round == self.schedule.warm
    }

    /// When the round after `round` is due.
    fn next_after(&self, round: u64) -> Instant {
        self.start + self.schedule.period * (round as u32 + 1)
    }
}

/// A server-to-client WebSocket text frame of `total` bytes, header included.
fn frame(total: usize) -> anyhow::Result<Vec<u8>> {
    let header = match total {
        0..=1 => anyhow::bail!("--bytes must be at least 2 (a frame header)"),
        2..=127 => 2,
        128..=129 => anyhow::bail!("--bytes 128 and 129 have no minimal WebSocket header"),
        130..=65_539 => 4,
        _ => anyhow::bail!("--bytes above 65539 is not a fan-out event"),
    };
    let len = total - header;
    let mut f = Vec::with_capacity(total);
    f.push(0x81);
    if header == 2 {
        f.push(len as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    f.extend((0..len).map(|i| b'a' + (i % 26) as u8));
    Ok(f)
}

/// This thread's user and system CPU so far, µs.
fn thread_cpu_us() -> (u64, u64) {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is the calling thread.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// The start of the measured rounds: the wall clock, and the writer's CPU (µs) then.
struct Mark {
    at: Instant,
    cpu: (u64, u64),
}

impl Mark {
    fn now(cpu: (u64, u64)) -> Self {
        Self {
            at: Instant::now(),
            cpu,
        }
    }

    /// What `writes` write calls since this mark cost, the writer's CPU being `cpu` now; `late`
    /// is how far behind its schedule a round started at worst.
    fn written(&self, writes: u64, cpu: (u64, u64), late: Duration) -> Written {
        Written {
            writes,
            user_us: cpu.0 - self.cpu.0,
            sys_us: cpu.1 - self.cpu.1,
            wall: self.at.elapsed(),
            late,
        }
    }
}

struct Written {
    /// Write calls in the measured rounds (fewer than rounds × sockets when a task of
    /// `tasks` found several rounds waiting and wrote them at once).
    writes: u64,
    user_us: u64,
    sys_us: u64,
    wall: Duration,
    late: Duration,
}

/// The writer: every `per_write / rate` seconds, one write of `per_write` frames to each
/// socket; the first second is not measured.
fn write_loop(
    mut socks: Vec<TcpStream>,
    args: &FloorArgs,
    payload: &[u8],
) -> std::io::Result<Written> {
    let mut pace = Pace::new(args);
    let mut mark = Mark::now(thread_cpu_us());
    for round in pace.rounds() {
        if pace.starting(round) {
            mark = Mark::now(thread_cpu_us());
        }
        for s in &mut socks {
            s.write_all(payload)?;
        }
        if let Some(wait) = pace
            .next_after(round)
            .checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    }
    let writes = pace.schedule.rounds * socks.len() as u64;
    Ok(mark.written(writes, thread_cpu_us(), pace.late))
}

/// [`write_loop`] on a current-thread tokio runtime of its own thread: the sockets in its
/// epoll, `try_write` first and an awaited write when a socket's buffer is full.
fn write_loop_tokio(
    socks: Vec<TcpStream>,
    args: &FloorArgs,
    payload: &[u8],
) -> std::io::Result<Written> {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut socks = socks
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut pace = Pace::new(args);
        let mut mark = Mark::now(thread_cpu_us());
        for round in pace.rounds() {
            if pace.starting(round) {
                mark = Mark::now(thread_cpu_us());
            }
            for s in &mut socks {
                match s.try_write(payload) {
                    Ok(n) if n == payload.len() => {}
                    Ok(n) => s.write_all(&payload[n..]).await?,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        s.write_all(payload).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            tokio::time::sleep_until(pace.next_after(round).into()).await;
        }
        let writes = pace.schedule.rounds * socks.len() as u64;
        Ok(mark.written(writes, thread_cpu_us(), pace.late))
    })
}

/// user and system CPU of the threads `tids` of this process so far, µs.
fn threads_cpu_us(tids: &[i32]) -> std::io::Result<(u64, u64)> {
    let per_tick = 1e6 / crate::procfs::clock_ticks_per_second();
    let (mut user, mut sys) = (0, 0);
    for tid in tids {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
        let (u, s) = crate::procfs::parse_stat_user_system_ticks(&stat).ok_or_else(|| {
            std::io::Error::other(format!("cannot parse /proc/self/task/{tid}/stat"))
        })?;
        user += u;
        sys += s;
    }
    Ok((
        (user as f64 * per_tick) as u64,
        (sys as f64 * per_tick) as u64,
    ))
}

/// The gateway's shape: each socket's own task on a two-worker runtime waits for the next
/// event (a `watch` of the round number, which wakes every task), then writes its frames —
/// those of every round it has not written yet, in one write, as the gateway's writer sends
/// what queued while it wrote. CPU is the workers' (from `/proc`, clock ticks: long runs only).
fn write_tasks(
    socks: Vec<TcpStream>,
    args: &FloorArgs,
    payload: &[u8],
) -> std::io::Result<Written> {
    use tokio::io::AsyncWriteExt;
    let tids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rt = {
        let tids = tids.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_start(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                tids.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
            })
            .enable_all()
            .build()?
    };
    // Workers start on their own threads after `build` returns: wait for both to register,
    // or the driver, scheduled on the first, may see only itself.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tids.lock().unwrap_or_else(|e| e.into_inner()).len() < 2 {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(
                "the runtime's 2 worker threads did not start within 5 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let payload: Arc<[u8]> = payload.into();
    let args = args.clone();
    let write_calls = Arc::new(AtomicU64::new(0));
    // The driver runs on a worker too: waking the tasks is part of a delivery's cost.
    let driver = rt.spawn(async move {
        let (round_tx, round_rx) = tokio::sync::watch::channel(0u64);
        let mut writers = Vec::with_capacity(socks.len());
        for s in socks {
            s.set_nonblocking(true)?;
            let mut s = tokio::net::TcpStream::from_std(s)?;
            let mut rounds = round_rx.clone();
            let payload = payload.clone();
            let write_calls = write_calls.clone();
            writers.push(tokio::spawn(async move {
                let mut written = 0;
                while rounds.changed().await.is_ok() {
                    let now = *rounds.borrow_and_update();
                    let behind = (now - written) as usize;
                    written = now;
                    if behind == 1 {
                        s.write_all(&payload).await?;
                    } else {
                        s.write_all(&payload.repeat(behind)).await?;
                    }
                    write_calls.fetch_add(1, Ordering::Relaxed);
                }
                std::io::Result::Ok(())
            }));
        }
        drop(round_rx);
        let mut pace = Pace::new(&args);
        let workers = tids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if workers.len() != 2 {
            return Err(std::io::Error::other(format!(
                "expected the runtime's 2 worker threads, found {}",
                workers.len()
            )));
        }
        let mut mark = Mark::now(threads_cpu_us(&workers)?);
        let mut calls_before = 0;
        for round in pace.rounds() {
            if pace.starting(round) {
                mark = Mark::now(threads_cpu_us(&workers)?);
                calls_before = write_calls.load(Ordering::Relaxed);
            }
            round_tx.send_replace(round + 1);
            tokio::time::sleep_until(pace.next_after(round).into()).await;
        }
        // The last round's writes are part of the window: wait for every task to end.
        drop(round_tx);
        for w in writers {
            w.await.map_err(std::io::Error::other)??;
        }
        let calls = write_calls.load(Ordering::Relaxed) - calls_before;
        Ok(mark.written(calls, threads_cpu_us(&workers)?, pace.late))
    });
    rt.block_on(driver).map_err(std::io::Error::other)?
}

pub async fn run(args: &FloorArgs) -> anyhow::Result<FloorReport> {
    anyhow::ensure!(
        args.clients > 0 && args.per_write > 0,
        "--clients and --per-write must be at least 1"
    );
    anyhow::ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "--rate and --duration must be positive"
    );
    let one = frame(args.bytes)?;
    let payload = one.repeat(args.per_write);
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
    let addr: SocketAddr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(args.clients);
    let mut socks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut client = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {i} of {} to {addr}", args.clients))?;
        let (sock, _) = listener.accept().context("accept")?;
        sock.set_nodelay(true)?;
        socks.push(sock);
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = client.read(&mut buf).await {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
        if (i + 1) % 1000 == 0 {
            eprintln!("floor: {} sockets connected", i + 1);
        }
    }
    eprintln!(
        "floor: writing {} B x {} per write to {} sockets, {} events/s, {} s (+1 s warm-up)",
        one.len(),
        args.per_write,
        args.clients,
        args.rate,
        args.duration
    );
    let a = args.clone();
    let written = tokio::task::spawn_blocking(move || match a.writer {
        WriterKind::Blocking => write_loop(socks, &a, &payload),
        WriterKind::Tokio => write_loop_tokio(socks, &a, &payload),
        WriterKind::Tasks => write_tasks(socks, &a, &payload),
    })
    .await?
    .context("a write failed")?;
    // The sockets closed with the writer: the readers end once they have read everything.
    for r in readers {
        r.await?;
    }
    let schedule = Schedule::of(args);
    let frames = args.clients as u64 * args.per_write as u64;
    let written_bytes = (schedule.warm + schedule.rounds) * frames * one.len() as u64;
    let delivered_share = received.load(Ordering::Relaxed) as f64 / written_bytes as f64;
    anyhow::ensure!(
        delivered_share == 1.0,
        "the readers got {delivered_share:.4} of the bytes written: the run is void"
    );
    let deliveries = schedule.rounds * frames;
    let per = |us: u64| us as f64 / deliveries as f64;
    Ok(FloorReport {
        scenario: "floor",
        params: args.clone(),
        writes: written.writes,
        deliveries,
        writer_user_us_per_delivery: per(written.user_us),
        writer_sys_us_per_delivery: per(written.sys_us),
        writer_us_per_delivery: per(written.user_us + written.sys_us),
        writer_us_per_write: (written.user_us + written.sys_us) as f64 / written.writes as f64,
        writer_core_share: (written.user_us + written.sys_us) as f64
            / written.wall.as_micros() as f64,
        delivered_share,
        late_ms: written.late.as_secs_f64() * 1e3,
    })
}

pub fn print(r: &FloorReport) {
    println!();
    println!(
        "== floor : {} sockets x {} events/s, {} B frames, {} per write ==",
        r.params.clients, r.params.rate, r.params.bytes, r.params.per_write
    );
    println!(
        "writer CPU per delivery {:.2} us (user {:.2}, system {:.2}); per write {:.2} us; {:.0} % of a core",
        r.writer_us_per_delivery,
        r.writer_user_us_per_delivery,
        r.writer_sys_us_per_delivery,
        r.writer_us_per_write,
        r.writer_core_share * 100.0
    );
    println!(
        "writes {}   deliveries {}   read back {:.4} of what was written   latest round {:.1} ms behind",
        r.writes, r.deliveries, r.delivered_share, r.late_ms
    );
    let period_ms = 1e3 * r.params.per_write as f64 / r.params.rate;
    if r.late_ms > period_ms {
        println!(
            "the writer fell behind its schedule (rounds every {period_ms:.1} ms): it could not keep this rate"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_size_asked_for_and_a_valid_header() {
        for total in [2, 100, 127, 130, 353, 3444, 65_539] {
            let f = frame(total).unwrap();
            assert_eq!(f.len(), total);
            assert_eq!(f[0], 0x81);
            // The load generator's own frame parser reads it as one whole text frame.
            let h = crate::ws::parse_header(&f).unwrap().unwrap();
            let len = h.header_len + h.payload_len;
            assert_eq!(len, total, "the header says the frame's length");
        }
        assert!(frame(1).is_err() && frame(128).is_err() && frame(65_540).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_frame_is_read_back_and_the_writer_is_measured() {
        for writer in [WriterKind::Blocking, WriterKind::Tokio, WriterKind::Tasks] {
            let args = FloorArgs {
                clients: 20,
                rate: 200.0,
                bytes: 353,
                per_write: 2,
                duration: 0.5,
                writer,
            };
            let r = run(&args).await.unwrap();
            assert_eq!(
                r.deliveries,
                50 * 20 * 2,
                "0.5 s of rounds every 10 ms to 20 sockets"
            );
            if writer == WriterKind::Tasks {
                // A task that finds two rounds waiting writes them at once.
                assert!((1..=50 * 20).contains(&r.writes), "{}", r.writes);
            } else {
                assert_eq!(r.writes, 50 * 20);
            }
            assert_eq!(r.delivered_share, 1.0, "{writer:?}");
            if writer == WriterKind::Tasks {
                // Clock ticks of /proc: this short a run may show none.
                assert!(r.writer_us_per_write >= 0.0 && r.writer_us_per_write.is_finite());
            } else {
                assert!(r.writer_us_per_write > 0.0 && r.writer_core_share > 0.0);
            }
        }
    }
}
