pub fn run(_r: u32) -> anyhow::Result<()> {
    Ok(())
}
