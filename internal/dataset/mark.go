package dataset

import "errors"

// A Mark is where a walk stands after an item. WalkFrom goes on from it
// with the item after, without listing or reading again what came before:
// a plan that fails after hours of a pool's listing is retried from where
// it stood (activities.Plan). The zero Mark is a walk's start.
type Mark struct {
	// Next is how many items were walked: the next item's ID.
	Next int64 `json:"next"`
	// Key is the last item's object key, for a prefix; for a WebDataset,
	// its archive's, and Sample how many of that archive's samples were
	// walked.
	Key    string `json:"key,omitempty"`
	Sample int    `json:"sample,omitempty"`
	// Offset is where a CSV manifest's next row begins, and Line how many
	// lines come before it, for the rows' line numbers.
	Offset int64 `json:"offset,omitempty"`
	Line   int   `json:"line,omitempty"`
	// Version is a manifest's version (its size and modification time,
	// and a Parquet file's ETag where the store gives one), or for a
	// WebDataset the mark's archive's: a row's or a sample's place in
	// another version of it means nothing (ErrChanged). A prefix, or a
	// WebDataset's other archives, that change are walked on from the key,
	// as a listing would have found them.
	Version string `json:"version,omitempty"`
}

// ErrChanged is WalkFrom's error when the manifest it was to go on in has
// changed since the Mark was taken: walk it from the start.
var ErrChanged = errors.New("changed since the walk stood there: walk it again from the start")
