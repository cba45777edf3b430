/**
 * The Lsn module: `X/Y` text, validity, and WAL segment arithmetic.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  INVALID_LSN,
  WAL_PAGE_SIZE,
  WAL_SEGMENT_SIZE,
  formatLsn,
  isValidLsn,
  lsnDistance,
  maxLsn,
  minLsn,
  parseLsn,
  segmentNumber,
  segmentOffset,
  segmentStart,
  walFileName,
} from '../../src/lib/lsn.js';

const MAX_U64 = (1n << 64n) - 1n;

describe('lsn', () => {
  describe('formatLsn / parseLsn', () => {
    it('formats as Postgres prints it: upper-case hex halves without padding', () => {
      expect(formatLsn(0n)).to.equal('0/0');
      expect(formatLsn(0x16b3748n)).to.equal('0/16B3748');
      expect(formatLsn((1n << 32n) | 0xabn)).to.equal('1/AB');
      expect(formatLsn(MAX_U64)).to.equal('FFFFFFFF/FFFFFFFF');
      expect(INVALID_LSN).to.equal(0n);
    });

    it('parses both cases and surrounding blanks', () => {
      expect(parseLsn('0/16B3748')).to.equal(0x16b3748n);
      expect(parseLsn('0/16b3748')).to.equal(0x16b3748n);
      expect(parseLsn(' 1/0 \n')).to.equal(1n << 32n);
      expect(parseLsn('FFFFFFFF/FFFFFFFF')).to.equal(MAX_U64);
      expect(parseLsn('00000000/00000001')).to.equal(1n);
    });

    it('round-trips every 64-bit value', () => {
      fc.assert(
        fc.property(fc.bigInt({ min: 0n, max: MAX_U64 }), (lsn) => {
          expect(parseLsn(formatLsn(lsn))).to.equal(lsn);
        }),
        { numRuns: 500 },
      );
    });

    it('orders formatted values the way the numbers are ordered (after parsing)', () => {
      fc.assert(
        fc.property(fc.bigInt({ min: 0n, max: MAX_U64 }), fc.bigInt({ min: 0n, max: MAX_U64 }), (a, b) => {
          expect(parseLsn(formatLsn(a)) < parseLsn(formatLsn(b))).to.equal(a < b);
        }),
      );
    });

    for (const text of ['', '0', '/', '0/', '/0', 'G/0', '0/1G', '123456789/0', '0/123456789', '0/1/2', '-1/0', '0x1/0', '1 /0', '0:16B3748']) {
      it(`refuses ${JSON.stringify(text)} with a RangeError quoting it`, () => {
        expect(() => parseLsn(text)).to.throw(RangeError, `"${text}" is not an LSN`);
      });
    }
  });

  describe('validity and comparison', () => {
    it('accepts exactly the unsigned 64-bit range', () => {
      expect(isValidLsn(0n)).to.equal(true);
      expect(isValidLsn(MAX_U64)).to.equal(true);
      expect(isValidLsn(MAX_U64 + 1n)).to.equal(false);
      expect(isValidLsn(-1n)).to.equal(false);
    });

    it('takes the larger, the smaller, and a distance that is never negative', () => {
      expect(maxLsn(5n, 7n)).to.equal(7n);
      expect(maxLsn(7n, 5n)).to.equal(7n);
      expect(minLsn(5n, 7n)).to.equal(5n);
      expect(minLsn(7n, 5n)).to.equal(5n);
      expect(lsnDistance(0x1000n, 0x1800n)).to.equal(0x800);
      expect(lsnDistance(0x1800n, 0x1000n)).to.equal(0);
      expect(lsnDistance(3n, 3n)).to.equal(0);
    });
  });

  describe('segment arithmetic', () => {
    it('uses 16 MiB segments and 8 KiB pages', () => {
      expect(WAL_SEGMENT_SIZE).to.equal(16_777_216n);
      expect(WAL_PAGE_SIZE).to.equal(8192n);
    });

    it('finds the segment and offset of an LSN, and the start of a segment', () => {
      expect(segmentNumber(0n)).to.equal(0n);
      expect(segmentNumber(WAL_SEGMENT_SIZE - 1n)).to.equal(0n);
      expect(segmentNumber(WAL_SEGMENT_SIZE)).to.equal(1n);
      expect(segmentNumber(parseLsn('1/0'))).to.equal(256n);
      expect(segmentOffset(WAL_SEGMENT_SIZE + 0x28n)).to.equal(0x28);
      expect(segmentOffset(WAL_SEGMENT_SIZE * 3n)).to.equal(0);
      expect(segmentStart(3n)).to.equal(0x3000000n);
      expect(formatLsn(segmentStart(256n))).to.equal('1/0');
    });

    it('honours another segment size', () => {
      const size = 1n << 20n;
      expect(segmentNumber(0x350000n, size)).to.equal(3n);
      expect(segmentOffset(0x350000n, size)).to.equal(0x50000);
      expect(segmentStart(3n, size)).to.equal(0x300000n);
    });

    it('puts every LSN inside its segment: start + offset = LSN', () => {
      fc.assert(
        fc.property(fc.bigInt({ min: 0n, max: MAX_U64 }), (lsn) => {
          const segment = segmentNumber(lsn);
          expect(segmentStart(segment) + BigInt(segmentOffset(lsn))).to.equal(lsn);
          expect(segmentOffset(lsn)).to.be.lessThan(Number(WAL_SEGMENT_SIZE));
        }),
      );
    });

    it('names segment files as Postgres does', () => {
      expect(walFileName(1, 0n)).to.equal('000000010000000000000000');
      expect(walFileName(1, segmentNumber(parseLsn('0/3000028')))).to.equal('000000010000000000000003');
      expect(walFileName(1, 0xffn)).to.equal('0000000100000000000000FF');
      // 256 segments of 16 MiB per "log id" (the high 32 bits of the LSN).
      expect(walFileName(1, segmentNumber(parseLsn('1/0')))).to.equal('000000010000000100000000');
      expect(walFileName(2, segmentNumber(parseLsn('A/5000000')))).to.equal('000000020000000A00000005');
      // With 1 GiB segments there are 4 per log id.
      expect(walFileName(1, 5n, 1n << 30n)).to.equal('000000010000000100000001');
    });
  });
});
