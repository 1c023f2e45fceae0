package selection

import (
	"strings"
	"testing"

	"dcd/internal/dataset"
	"dcd/schemas"
)

// near builds the neighbours of two queries: query 0 kept images 1, 2, 3
// (at 1, 2, 4), query 1 kept 3, 4, 5 (at 1, 3, 9); scan_k is 3.
func near(k int) *Neighbors {
	n := New(k)
	for _, a := range []struct {
		q, rank int32
		id      int64
		d       float64
	}{{0, 0, 1, 1}, {0, 1, 2, 2}, {0, 2, 3, 4}, {1, 0, 3, 1}, {1, 1, 4, 3}, {1, 2, 5, 9}} {
		n.Add(a.q, a.rank, dataset.Item{ID: a.id, Key: string(rune('a' + a.id)), Domain: map[bool]string{true: "blur"}[a.id%2 == 1]}, a.d)
	}
	return n
}

func ids(chosen []Chosen) []int64 {
	var out []int64
	for _, c := range chosen {
		out = append(out, c.Item.ID)
	}
	return out
}

func TestSelect(t *testing.T) {
	for _, c := range []struct {
		name   string
		sel    schemas.Selection
		want   []int64
		scores []float64
		note   string
	}{
		// Each query's first two.
		{"per_query", schemas.Selection{Strategy: schemas.PerQuery, K: 2}, []int64{1, 2, 3, 4}, []float64{1, 2, 1, 3}, ""},
		// By the nearest query: 1 and 3 at 1, then 2 at 2; the rest
		// left out, the budget filled within the horizon (4, query 0's
		// farthest).
		{"global min", schemas.Selection{Strategy: schemas.Global, Budget: 3}, []int64{1, 2, 3}, []float64{1, 2, 1}, ""},
		// By the mean, a query that did not keep an image counting at its
		// farthest (4 for query 0, 9 for query 1): 3 is (4+1)/2, 4 is
		// (4+3)/2, ahead of 1's (1+9)/2.
		{"global mean", schemas.Selection{Strategy: schemas.Global, Budget: 2, Aggregate: schemas.AggMean}, []int64{3, 4}, []float64{2.5, 3.5}, ""},
		{"threshold", schemas.Selection{Strategy: schemas.Threshold, Threshold: 2}, []int64{1, 2, 3}, []float64{1, 2, 1}, ""},
		// A budget the scan's neighbours cannot fill, a threshold past
		// its horizon, and one nothing is within, are said to be.
		{"budget unfilled", schemas.Selection{Strategy: schemas.Global, Budget: 9}, []int64{1, 2, 3, 4, 5}, nil, "selection: 5 images of a budget of 9: the scan kept 3 neighbours a query"},
		{"threshold past", schemas.Selection{Strategy: schemas.Threshold, Threshold: 5}, []int64{1, 2, 3, 4}, nil, "threshold 5 reaches past where the scan kept 3 neighbours a query (selection.scan_k), the nearest of the images it left out at least 4 away"},
		{"threshold none", schemas.Selection{Strategy: schemas.Threshold, Threshold: 0.5}, nil, nil, "no pool image is within threshold 0.5 (the nearest is 1 away, by min)"},
	} {
		chosen, note := near(c.sel.K).Select(c.sel, 3)
		if got := ids(chosen); !equal(got, c.want) {
			t.Errorf("%s: chose %v, want %v", c.name, got, c.want)
		}
		for i, s := range c.scores {
			if i < len(chosen) && chosen[i].Score != s {
				t.Errorf("%s: image %d scored %v, want %v", c.name, chosen[i].Item.ID, chosen[i].Score, s)
			}
		}
		if c.note == "" && note != "" || !strings.Contains(note, c.note) {
			t.Errorf("%s: note %q, want %q", c.name, note, c.note)
		}
	}
}

// Ties on a budget's edge go to the lower pool ID, whatever the order the
// neighbours came in.
func TestGlobalTies(t *testing.T) {
	for _, order := range [][]int64{{7, 3, 5}, {5, 7, 3}} {
		n := New(0)
		for r, id := range order {
			n.Add(0, int32(r), dataset.Item{ID: id}, 1)
		}
		if got := ids(mustSelect(n, schemas.Selection{Strategy: schemas.Global, Budget: 2})); !equal(got, []int64{3, 5}) {
			t.Errorf("neighbours %v: chose %v, want [3 5]", order, got)
		}
	}
}

func mustSelect(n *Neighbors, sel schemas.Selection) []Chosen {
	chosen, _ := n.Select(sel, 0)
	return chosen
}

func TestPrecision(t *testing.T) {
	chosen, _ := near(2).Select(schemas.Selection{Strategy: schemas.PerQuery, K: 2}, 3)
	if p := Precision(chosen, "blur"); p == nil || *p != 0.5 {
		t.Errorf("precision of images 1-4 (1 and 3 blurred): %v, want 0.5", p)
	}
	if Precision(chosen, "") != nil || Precision([]Chosen{{Item: dataset.Item{ID: 1}}}, "blur") != nil {
		t.Error("a precision without ground truth")
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
