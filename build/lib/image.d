build/lib/image.o: lib/image.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
