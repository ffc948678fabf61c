build/lib/digest.o: lib/digest.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
