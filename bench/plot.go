package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"strings"
)

// Chart is a grouped bar chart of delivered Mpps: one group per shape
// (direction/frame/VMs), one bar per system. It is drawn with the standard
// library only (a 5x7 bitmap font below), so the module needs no plotting
// dependency.
type Chart struct {
	Title  string
	Groups []string
	Series []string
	Values [][]float64 // [group][series]; <= 0 draws no bar
}

var seriesColors = map[string]color.RGBA{
	Ceiling: {150, 150, 150, 255},
	VMQ:     {31, 119, 180, 255},
	DPDK:    {255, 127, 14, 255},
}

// Chart builds the chart of the report's points.
func (r *Report) Chart() *Chart {
	c := &Chart{Title: "delivered Mpps  " + r.Started.Format("2006-01-02 15:04"), Series: []string{Ceiling, VMQ, DPDK}}
	idx := map[string]int{}
	for _, p := range r.Points {
		k := p.Key()
		i, ok := idx[k]
		if !ok {
			i = len(c.Groups)
			idx[k] = i
			c.Groups = append(c.Groups, k)
			c.Values = append(c.Values, make([]float64, len(c.Series)))
		}
		for s, name := range c.Series {
			if name == p.System && p.Err == "" {
				c.Values[i][s] = p.DeliveredMpps
			}
		}
	}
	return c
}

const (
	chartH      = 420
	chartTop    = 40
	chartBottom = 70 // room for the group labels
	chartLeft   = 60
	barW        = 14
	groupGap    = 16
)

// Image draws the chart.
func (c *Chart) Image() *image.RGBA {
	groupW := barW*len(c.Series) + groupGap
	w := chartLeft + max(1, len(c.Groups))*groupW + 20
	w = max(w, 420)
	img := image.NewRGBA(image.Rect(0, 0, w, chartH))
	fill(img, img.Bounds(), color.RGBA{255, 255, 255, 255})
	black := color.RGBA{0, 0, 0, 255}
	grey := color.RGBA{220, 220, 220, 255}
	top := 0.0
	for _, g := range c.Values {
		for _, v := range g {
			if v > top && !math.IsInf(v, 0) && !math.IsNaN(v) {
				top = v
			}
		}
	}
	step := niceStep(top)
	top = math.Ceil(top/step) * step
	if top <= 0 {
		top, step = 1, 0.25
	}
	plotH := chartH - chartTop - chartBottom
	y := func(v float64) int { return chartH - chartBottom - int(math.Round(v/top*float64(plotH))) }
	// Grid and y labels.
	for v := 0.0; v <= top+step/2; v += step {
		yy := y(v)
		fill(img, image.Rect(chartLeft, yy, w-10, yy+1), grey)
		text(img, chartLeft-6-textWidth(fmtTick(v)), yy-3, fmtTick(v), black)
	}
	fill(img, image.Rect(chartLeft, chartTop, chartLeft+1, chartH-chartBottom+1), black)
	fill(img, image.Rect(chartLeft, chartH-chartBottom, w-10, chartH-chartBottom+1), black)
	text(img, chartLeft, 12, c.Title, black)
	// Legend.
	lx := w - 10 - len(c.Series)*80
	for i, s := range c.Series {
		x := lx + i*80
		fill(img, image.Rect(x, 10, x+10, 20), seriesColors[s])
		text(img, x+14, 12, s, black)
	}
	for gi, g := range c.Groups {
		x0 := chartLeft + groupGap/2 + gi*groupW
		for si, v := range c.Values[gi] {
			if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			x := x0 + si*barW
			fill(img, image.Rect(x+1, y(v), x+barW-1, chartH-chartBottom), seriesColors[c.Series[si]])
		}
		// Group label: "rx/66/1" written over three lines.
		for li, part := range strings.Split(g, "/") {
			text(img, x0, chartH-chartBottom+6+li*10, part, black)
		}
	}
	text(img, 4, chartH-chartBottom+6, "dir", black)
	text(img, 4, chartH-chartBottom+16, "frame", black)
	text(img, 4, chartH-chartBottom+26, "vms", black)
	return img
}

// Encode writes the chart as PNG.
func (c *Chart) Encode(w io.Writer) error { return png.Encode(w, c.Image()) }

func niceStep(top float64) float64 {
	if top <= 0 || math.IsNaN(top) || math.IsInf(top, 0) {
		return 0.25
	}
	raw := top / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

func fmtTick(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

func textWidth(s string) int { return len(s) * 6 }

// text draws s with its top-left corner at (x, y); unknown characters
// draw as blanks.
func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	for i, r := range strings.ToUpper(s) {
		g, ok := font5x7[r]
		if !ok {
			continue
		}
		for row, bits := range g {
			for col := 0; col < 5; col++ {
				if bits[col] == '#' {
					p := image.Pt(x+i*6+col, y+row)
					if p.In(img.Bounds()) {
						img.SetRGBA(p.X, p.Y, c)
					}
				}
			}
		}
	}
}

// font5x7 is a minimal bitmap font: upper case, digits and the few
// punctuation marks the chart writes.
var font5x7 = map[rune][7]string{
	'0': {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."},
	'1': {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'2': {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"},
	'3': {"####.", "....#", "....#", ".###.", "....#", "....#", "####."},
	'4': {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."},
	'5': {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."},
	'6': {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."},
	'7': {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."},
	'8': {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."},
	'9': {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."},
	'A': {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'B': {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."},
	'C': {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."},
	'D': {"####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."},
	'E': {"#####", "#....", "#....", "####.", "#....", "#....", "#####"},
	'F': {"#####", "#....", "#....", "####.", "#....", "#....", "#...."},
	'G': {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"},
	'H': {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'I': {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'J': {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."},
	'K': {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"},
	'L': {"#....", "#....", "#....", "#....", "#....", "#....", "#####"},
	'M': {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"},
	'N': {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"},
	'O': {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'P': {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."},
	'Q': {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"},
	'R': {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"},
	'S': {".####", "#....", "#....", ".###.", "....#", "....#", "####."},
	'T': {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."},
	'U': {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'V': {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."},
	'W': {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."},
	'X': {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"},
	'Y': {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."},
	'Z': {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"},
	'.': {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."},
	'-': {".....", ".....", ".....", "#####", ".....", ".....", "....."},
	'/': {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."},
	':': {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."},
	'%': {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"},
	'(': {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."},
	')': {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."},
}
