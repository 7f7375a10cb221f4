import Foundation

/// Expert activations per layer as an SVG: one row per MoE layer, one cell per expert, darker = used more
/// (normalised per layer, so each row shows that layer's skew).
public enum Heatmap {
    public static func svg(_ stats: CacheStatistics, cell: Int = 4) -> String {
        let experts = stats.layers.first?.activations.count ?? 0
        let left = 64, top = 28
        let width = left + experts * cell + 16, height = top + stats.layers.count * max(cell, 6) + 24
        let rowH = max(cell, 6)
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(width)" height="\(height)" font-family="monospace" font-size="10">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="14">expert activations per MoE layer (\(stats.tokens) tokens; darker = more)</text>

        """
        for (row, l) in stats.layers.enumerated() {
            let y = top + row * rowH
            out += "<text x=\"4\" y=\"\(y + rowH - 1)\">layer \(l.layer)</text>\n"
            let peak = max(1, l.activations.max() ?? 1)
            for (e, n) in l.activations.enumerated() where n > 0 {
                let v = Double(n) / Double(peak)
                let shade = Int(255 * (1 - v))
                out += "<rect x=\"\(left + e * cell)\" y=\"\(y)\" width=\"\(cell)\" height=\"\(rowH - 1)\" fill=\"rgb(\(shade),\(shade),255)\">"
                    + "<title>layer \(l.layer) expert \(e): \(n)</title></rect>\n"
            }
        }
        out += "<text x=\"\(left)\" y=\"\(height - 6)\">expert 0 … \(experts - 1)</text>\n</svg>\n"
        return out
    }
}
