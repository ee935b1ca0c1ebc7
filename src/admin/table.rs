//! Plain-text tables for the admin commands: a header row, aligned columns,
//! `-` for empty cells.

/// Renders rows under a header, each column as wide as its widest cell.
pub(crate) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell_text(cell).chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(width - cell.chars().count()));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(|c| cell_text(c)).collect());
    }
    out
}

fn cell_text(cell: &str) -> &str {
    if cell.is_empty() { "-" } else { cell }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_empty_cells_show_a_dash() {
        let text = render(
            &["ID", "NAME"],
            &[
                vec!["cus_1".into(), "Ada".into()],
                vec!["cus_22".into(), String::new()],
            ],
        );
        assert_eq!(text, "ID      NAME\ncus_1   Ada\ncus_22  -\n");
    }
}
