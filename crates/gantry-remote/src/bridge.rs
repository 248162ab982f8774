//! `gantry agent connect`: this process's stdin and stdout become a
//! connection to the agent's Unix socket. Run by `ssh HOST gantry agent
//! connect`, it lets a CLI anywhere speak the agent API through the user's
//! own SSH, so no agent port is ever exposed on the network.

use std::path::Path;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Copies stdin to the socket and the socket to stdout until the agent
/// closes the connection (or stdin ends and the agent has answered).
pub fn bridge(socket: &Path) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot connect to the agent at {}: {e}", socket.display()),
            )
        })?;
        let (mut from_agent, mut to_agent) = stream.into_split();
        let mut stdin = tokio::io::stdin();
        let mut stdout = tokio::io::stdout();
        let upstream = async {
            let copied = tokio::io::copy(&mut stdin, &mut to_agent).await;
            // The client is done sending: let the agent see the end.
            let _ = to_agent.shutdown().await;
            copied
        };
        let downstream = async {
            let copied = tokio::io::copy(&mut from_agent, &mut stdout).await;
            let _ = stdout.flush().await;
            copied
        };
        tokio::pin!(upstream, downstream);
        // The agent closing the connection ends the bridge, whatever stdin
        // does; stdin ending first still waits for the agent's answer.
        tokio::select! {
            result = &mut downstream => result.map(drop),
            result = &mut upstream => {
                result?;
                downstream.await.map(drop)
            }
        }
    })
}
