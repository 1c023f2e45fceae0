package main

import (
	"testing"

	"dcd/schemas"
	"dcd/workflows"
)

// `starter pack`'s flags make the workflow's input; the pack itself runs
// end to end, through this command, in workflows' TestWebDatasetPoolSelectsAsItsManifest.
func TestParsePack(t *testing.T) {
	e, _, _ := testCLI()
	a, err := parsePack(e, []string{"-manifest", "s3://photos/pool.parquet?region=eu-west-1", "-per-archive", "500", "-window", "4", "s3://photos/pool-wds/?region=eu-west-1"})
	want := packArgs{id: "pack-s3-photos-pool-wds-region-eu-west-1", in: workflows.PackInput{
		Dataset: schemas.Dataset{Manifest: "s3://photos/pool.parquet?region=eu-west-1"}, Out: "s3://photos/pool-wds/?region=eu-west-1",
		PerArchive: 500, Readers: 64, Window: 4,
	}}
	if err != nil || a != want {
		t.Errorf("parsePack = %+v, %v; want %+v", a, err, want)
	}
	if a, _ := parsePack(e, []string{"-prefix", "train", "-id", "mine", "packed/"}); a.id != "mine" || a.in.Dataset.Prefix != "train" || a.in.PerArchive != 10000 {
		t.Errorf("parsePack with -id = %+v", a)
	}

	for _, args := range [][]string{
		{"pack", "out"},
		{"pack", "-prefix", "a", "-manifest", "b", "out"},
		{"pack", "-prefix", "a"},
		{"pack", "-prefix", "a", "-per-archive", "0", "out"},
		{"pack", "-prefix", "a", "-window", "0", "out"},
	} {
		if code, _, _, dialed := run(t, args...); code != 2 || dialed != nil {
			t.Errorf("%q: exit %d, want 2 (usage) before dialing", args, code)
		}
	}
}
