// Package selection chooses a dcd method's debug-train images among the
// pool images the scan found nearest to the failures (the queries):
//
//   - per_query: every query's K nearest;
//   - global: the Budget images with the smallest aggregate distance;
//   - threshold: every image whose aggregate distance is at most Threshold.
//
// The aggregate is an image's distance to the nearest query (min), or its
// mean distance over every query (mean). The scan kept scan_k neighbours a
// query, so global and threshold choose among those; a query that did not
// keep an image counts, in its mean, with its farthest kept distance, a
// lower bound of the true one.
package selection

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"dcd/internal/dataset"
	"dcd/schemas"
)

// Chosen is a pool image a selection took, with the score it was ranked
// by (a squared distance in the similarity model's space).
type Chosen struct {
	Item  dataset.Item
	Score float64
}

// Neighbors are the scan's merged neighbours of every query, gathered for
// a selection.
type Neighbors struct {
	k        int // per_query's: an image within some query's first k is picked
	cands    map[int64]*candidate
	farthest map[int32]float64 // each query's farthest kept distance
	kept     map[int32]int     // each query's neighbours kept
}

type candidate struct {
	item    dataset.Item
	sum     float64 // distances to the queries that kept it
	min     float64
	queries []int32 // that kept it
	pick    bool    // per_query: within some query's K
}

// New gathers neighbours for a selection whose per_query K is k.
func New(k int) *Neighbors {
	return &Neighbors{k: k, cands: map[int64]*candidate{}, farthest: map[int32]float64{}, kept: map[int32]int{}}
}

// Add takes pool image item as query's neighbour of rank (from 0), at
// distance. An image is added once per query that kept it. Add keeps its
// own copy of an image's strings, which may be views of a record's
// buffers the caller frees.
func (n *Neighbors) Add(query, rank int32, item dataset.Item, distance float64) {
	c, ok := n.cands[item.ID]
	if !ok {
		item.Key, item.Label, item.Domain, item.Version = strings.Clone(item.Key), strings.Clone(item.Label), strings.Clone(item.Domain), strings.Clone(item.Version)
		c = &candidate{item: item, min: distance}
		n.cands[item.ID] = c
	}
	c.sum += distance
	c.min = min(c.min, distance)
	c.queries = append(c.queries, query)
	if int(rank) < n.k {
		c.pick = true
	}
	n.farthest[query] = max(n.farthest[query], distance)
	n.kept[query]++
}

// Select chooses the images sel asks for, in pool-ID order, with a note
// where it could not do as asked: the scan's scanK neighbours a query may
// have left out images a budget or a threshold reaches, and a threshold
// no image is within says how near the nearest is.
func (n *Neighbors) Select(sel schemas.Selection, scanK int) ([]Chosen, string) {
	var allFar float64 // summed in query order, so the scores are reproducible
	for _, q := range slices.Sorted(maps.Keys(n.farthest)) {
		allFar += n.farthest[q]
	}
	var chosen []Chosen
	nearest := math.Inf(1) // of every candidate's scores
	for _, c := range n.cands {
		score := c.min
		if sel.Aggregate == schemas.AggMean {
			rest := allFar
			for _, q := range c.queries {
				rest -= n.farthest[q]
			}
			score = (c.sum + rest) / float64(len(n.farthest))
		}
		nearest = min(nearest, score)
		if sel.Strategy == schemas.PerQuery && !c.pick {
			continue
		}
		if sel.Strategy == schemas.Threshold && score > sel.Threshold {
			continue
		}
		chosen = append(chosen, Chosen{Item: c.item, Score: score})
	}
	if sel.Strategy == schemas.Global {
		slices.SortFunc(chosen, func(x, y Chosen) int {
			return cmp.Or(cmp.Compare(x.Score, y.Score), cmp.Compare(x.Item.ID, y.Item.ID))
		})
		chosen = chosen[:min(sel.Budget, len(chosen))]
	}
	note := n.reach(sel, scanK, chosen)
	if note == "" && sel.Strategy == schemas.Threshold && len(chosen) == 0 && len(n.cands) > 0 {
		// The distances are the similarity space's, which a user setting
		// a threshold has not seen yet: name the nearest.
		note = fmt.Sprintf("selection: no pool image is within threshold %g (the nearest is %.4g away, by %s); raise selection.threshold", sel.Threshold, nearest, cmp.Or(sel.Aggregate, schemas.AggMin))
	}
	slices.SortFunc(chosen, func(x, y Chosen) int { return cmp.Compare(x.Item.ID, y.Item.ID) })
	return chosen, note
}

// reach says whether a global or threshold selection may have left out
// pool images it asked for: the scan kept scanK neighbours a query, so an
// image it did not keep is at least each full query's farthest kept
// distance from that query. By the nearest query (min) it is at least the
// horizon, the least of those distances; by the mean over every query, at
// least their mean (when every query is full: one that is not kept every
// image). A budget not filled, or filled past the horizon, or a threshold
// at or past it, may miss images the scan did not keep.
func (n *Neighbors) reach(sel schemas.Selection, scanK int, chosen []Chosen) string {
	if scanK <= 0 || sel.Strategy == schemas.PerQuery {
		return ""
	}
	horizon, full := math.Inf(1), 0
	var sum float64 // in query order, as the scores are summed
	for _, q := range slices.Sorted(maps.Keys(n.farthest)) {
		if n.kept[q] >= scanK {
			horizon = min(horizon, n.farthest[q])
			full++
		}
		sum += n.farthest[q]
	}
	if math.IsInf(horizon, 1) { // the scan kept every pool image
		return ""
	}
	away := "the nearest of the images it left out at least %.4g away"
	raise := fmt.Sprintf("raise selection.scan_k (to %d takes the budget's nearest whatever their queries)", sel.Budget)
	if sel.Aggregate == schemas.AggMean {
		if full < len(n.farthest) {
			return "" // a query that is not full kept every pool image
		}
		// A candidate's mean, which counts a query that did not keep it
		// at that query's farthest, is at most this: a filled budget
		// never reaches past it, and is not noted (its means are lower
		// bounds: README, Config).
		horizon, away = sum/float64(len(n.farthest)), "the images it left out at least %.4g away on the mean"
		raise = "raise selection.scan_k"
	}
	fix := fmt.Sprintf("the scan kept %d neighbours a query (selection.scan_k), "+away, scanK, horizon)
	switch {
	case sel.Strategy == schemas.Global && len(chosen) < sel.Budget:
		return fmt.Sprintf("selection: %d images of a budget of %d: %s; %s", len(chosen), sel.Budget, fix, raise)
	case sel.Strategy == schemas.Global && chosen[len(chosen)-1].Score > horizon:
		return fmt.Sprintf("selection: the budget's last image is %.4g away, past where %s; %s", chosen[len(chosen)-1].Score, fix, raise)
	case sel.Strategy == schemas.Threshold && sel.Threshold >= horizon:
		return fmt.Sprintf("selection: threshold %g reaches past where %s: images within it may be left out; raise selection.scan_k", sel.Threshold, fix)
	}
	return ""
}

// Precision is the share of chosen images from domain, nil without ground
// truth (no domain asked for, or none known).
func Precision(chosen []Chosen, domain string) *float64 {
	if domain == "" || len(chosen) == 0 {
		return nil
	}
	hits, known := 0, false
	for _, c := range chosen {
		known = known || c.Item.Domain != ""
		if c.Item.Domain == domain {
			hits++
		}
	}
	if !known {
		return nil
	}
	p := float64(hits) / float64(len(chosen))
	return &p
}
