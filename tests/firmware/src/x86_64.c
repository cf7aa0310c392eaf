/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Not firmware: the smallest host (x86-64) program, to test that rprocd
 * refuses an image built for the wrong machine. Built with the host gcc.
 */
void _start(void)
{
	for (;;)
		;
}
