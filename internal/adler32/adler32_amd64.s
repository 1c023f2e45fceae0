//go:build !purego

#include "textflag.h"

// Per 32-byte block b[0..31], with s1 the sum before it:
//   s1 += Σ b[i]
//   s2 += 32·s1 + Σ (32−i)·b[i]
// PSADBW sums bytes, PMADDUBSW weighs them by the taps 32..1 into 16-bit
// pairs and PMADDWL widens those to 32 bits. The 32·s1 terms are kept as
// the running sum of s1 over the blocks (X0), shifted by 5 at the end.

DATA taps<>+0(SB)/8, $0x191a1b1c1d1e1f20 // 32, 31, …, 25
DATA taps<>+8(SB)/8, $0x1112131415161718 // 24, …, 17
DATA taps<>+16(SB)/8, $0x090a0b0c0d0e0f10 // 16, …, 9
DATA taps<>+24(SB)/8, $0x0102030405060708 // 8, …, 1
GLOBL taps<>(SB), RODATA|NOPTR, $32

DATA ones<>+0(SB)/8, $0x0001000100010001
DATA ones<>+8(SB)/8, $0x0001000100010001
GLOBL ones<>(SB), RODATA|NOPTR, $16

// func blocksSSSE3(s1, s2 uint32, p *byte, n int) (uint32, uint32)
TEXT ·blocksSSSE3(SB), NOSPLIT, $0-32
	MOVL s1+0(FP), AX
	MOVL s2+4(FP), BX
	MOVQ p+8(FP), SI
	MOVQ n+16(FP), CX

	// X0: Σ over blocks of s1 before it, starting from n·s1 for the
	// incoming s1; X1: s2; X2: s1 of this call's bytes.
	MOVQ  AX, DX
	IMULQ CX, DX
	MOVQ  DX, X0
	MOVQ  BX, X1
	PXOR  X2, X2
	PXOR  X3, X3
	MOVOU taps<>+0(SB), X4
	MOVOU taps<>+16(SB), X5
	MOVOU ones<>(SB), X6

loop:
	MOVOU     (SI), X7
	MOVOU     16(SI), X8
	PADDL     X2, X0
	MOVO      X7, X9
	PSADBW    X3, X9
	PADDL     X9, X2
	PMADDUBSW X4, X7
	PMADDWL   X6, X7
	PADDL     X7, X1
	MOVO      X8, X9
	PSADBW    X3, X9
	PADDL     X9, X2
	PMADDUBSW X5, X8
	PMADDWL   X6, X8
	PADDL     X8, X1
	ADDQ      $32, SI
	DECQ      CX
	JNZ       loop

	PSLLL $5, X0
	PADDL X0, X1

	// Add up the lanes.
	PSHUFD $0x4e, X2, X9
	PADDL  X9, X2
	PSHUFD $0xb1, X2, X9
	PADDL  X9, X2
	MOVQ   X2, DX
	ADDL   DX, AX
	PSHUFD $0x4e, X1, X9
	PADDL  X9, X1
	PSHUFD $0xb1, X1, X9
	PADDL  X9, X1
	MOVQ   X1, BX

	MOVL AX, ret+24(FP)
	MOVL BX, ret1+28(FP)
	RET
