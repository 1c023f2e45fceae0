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
	want := packArgs{id: "pack-s3-photos-pool-wds-region-eu-west-1-252e4481", in: workflows.PackInput{
		Dataset: schemas.Dataset{Manifest: "s3://photos/pool.parquet?region=eu-west-1"}, Out: "s3://photos/pool-wds/?region=eu-west-1",
		PerArchive: 500, Readers: 64, Window: 4,
	}}
	if err != nil || a != want {
		t.Errorf("parsePack = %+v, %v; want %+v", a, err, want)
	}
	if a, _ := parsePack(e, []string{"-prefix", "train", "-id", "mine", "packed/"}); a.id != "mine" || a.in.Dataset.Prefix != "train" || a.in.PerArchive != 10000 {
		t.Errorf("parsePack with -id = %+v", a)
	}
	// Two outputs whose names differ only in unsafe bytes get their own IDs.
	ids := map[string]string{}
	for _, out := range []string{"pool_wds", "pool/wds", "pool-wds", "pool--wds", "pool wds"} {
		a, err := parsePack(e, []string{"-prefix", "train", out})
		if err != nil {
			t.Fatal(err)
		}
		if other, ok := ids[a.id]; ok {
			t.Errorf("outputs %q and %q share the ID %s", other, out, a.id)
		}
		ids[a.id] = out
	}
	if ids["pack-pool-wds"] != "pool-wds" {
		t.Errorf("IDs %v: want a safe output's ID to be pack-<output>", ids)
	}

	for _, args := range [][]string{
		{"pack", "out"},
		{"pack", "-prefix", "a", "-manifest", "b", "out"},
		{"pack", "-prefix", "a"},
		{"pack", "-prefix", "a", "-per-archive", "0", "out"},
		{"pack", "-prefix", "a", "-window", "0", "out"},
		{"pack", "-manifest", "https://h/m.csv?X-Amz-Signature=S", "out"}, // a pack's input is in its history
		{"pack", "-prefix", "s3://u:p@b/x/", "out"},
	} {
		if code, _, _, dialed := run(t, args...); code != 2 || dialed != nil {
			t.Errorf("%q: exit %d, want 2 (usage) before dialing", args, code)
		}
	}
}
