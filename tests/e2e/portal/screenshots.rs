//! The README's pictures of the portal, rendered from a seeded fleet in headless Chromium:
//!
//! ```text
//! cargo build --workspace --bins && cargo test --test e2e -- --ignored portal::screenshots
//! ```
//!
//! writes `docs/screenshots/*.png` (Portuguese, as the city hall sees it). Ignored in the normal
//! run: it proves nothing the other portal tests do not.

use anyhow::Result;

use super::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "renders docs/screenshots: cargo test --test e2e -- --ignored portal::screenshots"]
async fn screenshots() -> Result<()> {
    let fleet = Fleet::start("portalshots").await?;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::create_dir_all(&out)?;
    let b = fleet.admin_browser("pt-BR").await?;
    let pages = [
        ("overview", "/".to_string()),
        ("machines", "/machines".to_string()),
        ("machine", format!("/machines/{}", fleet.saude)),
        ("compliance", "/compliance".to_string()),
        ("enrollment", "/enrollment".to_string()),
    ];
    for (name, path) in pages {
        b.goto(&fleet.url(&path)).await?;
        std::fs::write(out.join(format!("{name}.png")), b.screenshot().await?)?;
    }
    b.goto(&fleet.url("/login")).await?;
    b.close().await?;
    println!("screenshots written to {}", out.display());
    Ok(())
}
