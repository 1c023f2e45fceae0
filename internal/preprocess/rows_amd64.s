//go:build !purego

#include "textflag.h"

// func addScaledRowAVX(dst, src *float32, n int, w float32)
//
// Sixteen samples a step, then one at a time.
TEXT ·addScaledRowAVX(SB), NOSPLIT, $0-28
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS w+24(FP), Y0
	XORQ AX, AX
	MOVQ CX, BX
	ANDQ $~15, BX

wide:
	CMPQ AX, BX
	JGE  tail
	VMULPS  (SI)(AX*4), Y0, Y1
	VMULPS  32(SI)(AX*4), Y0, Y2
	VADDPS  (DI)(AX*4), Y1, Y1
	VADDPS  32(DI)(AX*4), Y2, Y2
	VMOVUPS Y1, (DI)(AX*4)
	VMOVUPS Y2, 32(DI)(AX*4)
	ADDQ $16, AX
	JMP  wide

tail:
	CMPQ AX, CX
	JGE  done
	VMULSS (SI)(AX*4), X0, X1
	VADDSS (DI)(AX*4), X1, X1
	VMOVSS X1, (DI)(AX*4)
	INCQ AX
	JMP  tail

done:
	VZEROUPPER
	RET

// func bytesToFloatsAVX2(dst *float32, src *byte, n int)
//
// n is a multiple of 16: two groups of eight bytes widened to 32-bit
// integers, then converted (exactly: every byte is a float32).
TEXT ·bytesToFloatsAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX

loop:
	CMPQ      AX, CX
	JGE       done
	VPMOVZXBD (SI)(AX*1), Y0
	VPMOVZXBD 8(SI)(AX*1), Y1
	VCVTDQ2PS Y0, Y0
	VCVTDQ2PS Y1, Y1
	VMOVUPS   Y0, (DI)(AX*4)
	VMOVUPS   Y1, 32(DI)(AX*4)
	ADDQ      $16, AX
	JMP       loop

done:
	VZEROUPPER
	RET
